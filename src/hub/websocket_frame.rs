//! WebSocket data frames for hub messages, encoded (and deflated) once per message and shared
//! by every subscriber: the same bytes are written to every socket.

use bytes::{BufMut, Bytes, BytesMut};
use std::io::Write;

use flate2::write::DeflateEncoder;
use flate2::Compression;

/// What a WebSocket message of a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The payload as the backend sent it (text if UTF-8, else binary).
    Raw,
    /// `{"id","event","data"}`, as in long-poll batches.
    Json,
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// A complete unmasked server frame: FIN, RSV1 when `compressed`, opcode, length, payload.
pub fn encode_frame(payload: &[u8], text: bool, compressed: bool) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    let opcode = if text { OPCODE_TEXT } else { OPCODE_BINARY };
    frame.put_u8(0x80 | if compressed { 0x40 } else { 0 } | opcode);
    match payload.len() {
        len @ 0..=125 => frame.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// Deflates one whole message per RFC 7692 with no context carried over (the server always
/// negotiates `server_no_context_takeover`), so the result is valid for every client.
pub fn deflate_message(payload: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = DeflateEncoder::new(Vec::with_capacity(payload.len() / 2 + 64), Compression::fast());
    encoder.write_all(payload)?;
    // A sync flush ends the data with an empty stored block, 00 00 FF FF, which the
    // receiver adds back; taking the buffer here leaves out the final block `finish` adds.
    encoder.flush()?;
    let mut output = std::mem::take(encoder.get_mut());
    if output.ends_with(&[0x00, 0x00, 0xFF, 0xFF]) {
        output.truncate(output.len() - 4);
    }
    if let Some(observer) = super::events::observer() {
        observer.deflated(payload.len(), output.len());
    }
    Ok(Bytes::from(output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut input = data.to_vec();
        input.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF]);
        let mut decompressor = Decompress::new(false);
        let mut output = Vec::with_capacity(1 << 20);
        decompressor
            .decompress_vec(&input, &mut output, FlushDecompress::Sync)
            .expect("valid deflate");
        output
    }

    #[test]
    fn frame_headers_follow_rfc_6455_lengths() {
        assert_eq!(&encode_frame(b"hi", true, false)[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&encode_frame(b"", false, true)[..2], &[0xC2, 0]);
        let medium = encode_frame(&[0u8; 300], true, false);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2C]);
        let large = encode_frame(&vec![0u8; 70_000], true, false);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn deflated_messages_inflate_back_without_shared_context() {
        let text = "the same message, ".repeat(200);
        let first = deflate_message(text.as_bytes()).expect("deflates");
        let second = deflate_message(text.as_bytes()).expect("deflates");
        assert_eq!(first, second, "no context: identical input, identical output");
        assert!(first.len() < text.len() / 5);
        assert_eq!(inflate(&first), text.as_bytes());
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(inflate(&deflate_message(&big).expect("deflates")), big);
        assert_eq!(inflate(&deflate_message(b"").expect("deflates")), b"");
    }
}
