//! Reading a request head before pingora sees the connection: the bytes wait in a small
//! buffer (not in a pingora session, ~23 KiB with its buffers and state machine), and
//! pingora is handed them as the request's already-read prefix (`set_pipelined_prefix`).
//! 8 000 clients connecting at once each wait for their request like this, not in pingora;
//! the next request on a held long poll's connection is read the same way (`next_poll`).

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// A typical head is 100–300 bytes; the buffer grows for a larger one.
pub const HEAD_BUFFER_BYTES: usize = 1024;
/// Read on for a complete head up to this much; past it, pingora reads the rest (under the
/// connection's header budget, which bounds it).
const MAX_HEAD_BYTES: usize = 8 * HEAD_BUFFER_BYTES;
/// Header lines parsed here; a request with more is pingora's to parse.
pub const MAX_HEADERS: usize = 48;

/// What reading a head gave.
pub enum Head<T> {
    /// A complete head: the bytes read (the head and anything after it), the head's length,
    /// and what the caller made of the parsed head (it is parsed once).
    Complete(BytesMut, usize, T),
    /// Bytes that are not (or not yet, within `MAX_HEAD_BYTES`) a head httparse accepts:
    /// pingora parses them, and answers a malformed one with its error.
    Unparsed(BytesMut),
    /// The client closed (before or inside a head) or the read failed (an oversized header
    /// refused with `431` by the header budget): nothing to answer.
    Close,
}

/// Reads until a whole request head is in (or it cannot be one httparse accepts), and hands
/// the parsed head and its bytes to `on_complete`. `known` is asked first, after every
/// read, whether the bytes read are exactly a whole head it knows without parsing (a long
/// poll's repeated request, see `next_poll`): what it makes of them is the outcome, with
/// all of them as the head. `already_read` is the start of the head when another read got
/// it (empty: nothing yet); it is looked at before anything more is read.
pub async fn read_head<T>(
    stream: &mut Stream,
    already_read: BytesMut,
    known: impl Fn(&[u8]) -> Option<T>,
    on_complete: impl FnOnce(&httparse::Request, &[u8]) -> T,
) -> Head<T> {
    let mut bytes = already_read;
    let mut read_first = bytes.is_empty();
    if read_first {
        bytes.reserve(HEAD_BUFFER_BYTES);
    }
    loop {
        if read_first {
            match stream.read_buf(&mut bytes).await {
                // Closed between requests (the usual end of a keep-alive connection), or
                // inside a head, or the read failed: nothing to answer.
                Ok(0) | Err(_) => return Head::Close,
                Ok(_) => {}
            }
        }
        read_first = true;
        if let Some(made) = known(&bytes) {
            let length = bytes.len();
            return Head::Complete(bytes, length, made);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&bytes) {
            Ok(httparse::Status::Complete(length)) => {
                let made = on_complete(&parsed, &bytes[..length]);
                return Head::Complete(bytes, length, made);
            }
            // Read on while it may still be a head the lane serves; the header budget on
            // the stream bounds how much that can be.
            Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD_BYTES => {}
            _ => return Head::Unparsed(bytes),
        }
    }
}
