//! SSE events (the WHATWG event-stream format) and HTTP/1.1 chunks of them.

use bytes::{BufMut, Bytes, BytesMut};

use super::message_slot;
use crate::hub::{Cursor, Message};

/// The SSE event of `message`, made once per message.
pub fn event(message: &Message) -> Bytes {
    message.encodings.inline(message_slot::SSE_EVENT, || {
        encode_event(&message.cursor, message.event.as_deref(), &message.data)
    })
}

/// The SSE event of `message` as one HTTP/1.1 chunk, made once per message.
pub fn chunk(message: &Message) -> Bytes {
    message
        .encodings
        .inline(message_slot::SSE_CHUNK, || http_chunk(&event(message)))
}

/// Encodes one SSE event. Every line of the payload becomes its own `data:` line (CR, LF and
/// CRLF all end a line, as the SSE parser treats them), so multi-line JSON survives intact.
pub fn encode_event(cursor: &Cursor, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(data.len() + 48);
    frame.put_slice(b"id: ");
    frame.put_slice(cursor.to_string().as_bytes());
    frame.put_u8(b'\n');
    if let Some(event) = event {
        if event != "message" {
            frame.put_slice(b"event: ");
            frame.put_slice(event.as_bytes());
            frame.put_u8(b'\n');
        }
    }
    for line in split_lines(data) {
        frame.put_slice(b"data: ");
        frame.put_slice(line);
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    frame.freeze()
}

/// `data` as one chunk of an HTTP/1.1 chunked body (RFC 9112 §7.1).
pub fn http_chunk(data: &[u8]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(data.len() + 12);
    put_http_chunk(&mut chunk, data);
    chunk.freeze()
}

/// [`http_chunk`] written at the end of `wire` (after a response head, say).
pub fn put_http_chunk(wire: &mut BytesMut, data: &[u8]) {
    wire.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    wire.put_slice(data);
    wire.put_slice(b"\r\n");
}

fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < data.len() {
        match data[index] {
            b'\n' => {
                lines.push(&data[start..index]);
                start = index + 1;
            }
            b'\r' => {
                lines.push(&data[start..index]);
                if data.get(index + 1) == Some(&b'\n') {
                    index += 1;
                }
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    lines.push(&data[start..]);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Payload;

    fn cursor(seq: u64) -> Cursor {
        Cursor::test(seq)
    }

    #[test]
    fn sse_frame_has_id_event_and_one_data_line_per_line() {
        let frame = encode_event(&cursor(7), Some("price"), b"{\n  \"a\": 1\r\n}\rend");
        assert_eq!(
            &frame[..],
            b"id: 1000000-7\nevent: price\ndata: {\ndata:   \"a\": 1\ndata: }\ndata: end\n\n"
        );
    }

    #[test]
    fn default_event_name_is_omitted_and_empty_data_still_sends_a_data_line() {
        let frame = encode_event(&cursor(1), Some("message"), b"");
        assert_eq!(&frame[..], b"id: 1000000-1\ndata: \n\n");
    }

    #[test]
    fn chunks_carry_their_hex_length() {
        assert_eq!(&http_chunk(b"data: x\n\n")[..], b"9\r\ndata: x\n\n\r\n");
        assert_eq!(&http_chunk(&[b'a'; 26])[..4], b"1a\r\n");
    }

    #[test]
    fn a_message_is_framed_once_and_its_chunk_wraps_its_event() {
        let message = Message::new(
            cursor(2),
            Payload {
                data: Bytes::from_static(b"x"),
                ..Payload::default()
            },
        );
        let chunk_bytes = chunk(&message);
        assert_eq!(&chunk_bytes[..], b"17\r\nid: 1000000-2\ndata: x\n\n\r\n");
        assert_eq!(chunk(&message).as_ptr(), chunk_bytes.as_ptr(), "shared");
        assert_eq!(event(&message).as_ptr(), event(&message).as_ptr());
        assert_eq!(message.weight(), 1 + 23 + chunk_bytes.len());
    }
}
