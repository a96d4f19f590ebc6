//! Reading a request head before pingora sees the connection: the bytes wait in a small
//! buffer (not in a pingora session, ~23 KiB with its buffers and state machine), and
//! pingora is handed them as the request's already-read prefix (`set_pipelined_prefix`).
//! 8 000 clients connecting at once each wait for their request like this, not in pingora;
//! the next request on a held long poll's connection is read the same way (`next_poll`).

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_http::RequestHeader;
use tokio::io::AsyncReadExt;

use super::router::header;

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

/// The request a complete parsed head is, if it is one a lane may serve (a long poll, a new
/// SSE stream): a `GET` over HTTP/1.1 with no body, no upgrade and nothing saying the
/// connection ends.
pub fn plain_get(parsed: &httparse::Request) -> Option<RequestHeader> {
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let mut request = RequestHeader::build_no_case(
        http::Method::GET,
        parsed.path?.as_bytes(),
        Some(parsed.headers.len()),
    )
    .ok()?;
    for line in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(line.value).ok()?;
        request.append_header(name, value).ok()?;
    }
    let has_body = request.headers.contains_key(http::header::TRANSFER_ENCODING)
        || header(&request, "content-length").is_some_and(|length| length.trim() != "0");
    let ends_or_upgrades = request.headers.contains_key(http::header::UPGRADE)
        || request.headers.contains_key(http::header::EXPECT)
        || request
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|value| !value.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    (!has_body && !ends_or_upgrades).then_some(request)
}

/// Parses `bytes`, a complete head, and hands it to `inspect` (for tests of what a lane makes
/// of a head).
#[cfg(test)]
pub fn with_parsed_head<T>(bytes: &[u8], inspect: impl FnOnce(&httparse::Request) -> T) -> T {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    assert!(parsed.parse(bytes).expect("a head").is_complete());
    inspect(&parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::router::header;

    /// [`plain_get`] of a complete head.
    fn parse_head(bytes: &[u8]) -> Option<RequestHeader> {
        with_parsed_head(bytes, plain_get)
    }

    #[test]
    fn a_plain_get_is_parsed_and_others_are_left_to_pingora() {
        let poll =
            parse_head(b"GET /feed?wait=10&cursor=3 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
                .expect("a plain GET");
        assert_eq!(poll.uri.path(), "/feed");
        assert_eq!(poll.uri.query(), Some("wait=10&cursor=3"));
        assert_eq!(header(&poll, "host"), Some("x"));
        for other in [
            &b"POST /feed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
            b"HEAD /feed?wait=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert!(parse_head(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
        assert!(parse_head(b"GET /feed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_some());
    }
}
