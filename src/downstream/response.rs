//! Small helpers for complete (non-streaming) responses and for reading a client's cursor.

use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tokio::time::Instant;

use super::router::{header, query_param};
use crate::hub::{Cursor, CursorText, Message, Mode, Resume, Topic};

/// Takes the client connection out of pingora, leaving a closed placeholder so that
/// pingora's end-of-request bookkeeping finds nothing to flush or reuse. Dropping what is
/// returned closes the socket at once, even with unsent bytes (a client that stopped reading).
pub fn take_connection(session: &mut Session) -> Box<pingora_core::protocols::http::ServerSession> {
    let mut placeholder =
        pingora_core::protocols::http::ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
    placeholder.set_keepalive(None);
    std::mem::replace(&mut session.downstream_session, Box::new(placeholder))
}

/// Where a complete answer's status and headers go: pingora's `ResponseHeader` (an answer
/// written through pingora) or a [`WireHead`] (an answer a detached long poll writes to its
/// socket itself: pingora's header map and its case map were ~14 % of a long poll's CPU).
pub trait AnswerHead: Sized {
    fn with_status(status: u16) -> Result<Self>;
    fn status_code(&self) -> u16;
    fn get(&self, name: &str) -> Option<&str>;
    /// Sets `name`, replacing a header of that name.
    fn set(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()>;
    /// Adds `name`, keeping a header of that name.
    fn append(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()>;
    /// An answer built as a `ResponseHeader` (a state, a patch), as this kind of head.
    fn from_response(response: ResponseHeader) -> Result<Self>;
}

impl AnswerHead for ResponseHeader {
    fn with_status(status: u16) -> Result<Self> {
        ResponseHeader::build(status, Some(8))
    }
    fn status_code(&self) -> u16 {
        self.status.as_u16()
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
    fn set(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()> {
        self.insert_header(name, value.as_ref())
    }
    fn append(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()> {
        self.append_header(name, value.as_ref()).map(|_| ())
    }
    fn from_response(response: ResponseHeader) -> Result<Self> {
        Ok(response)
    }
}

/// An answer's status and headers as a plain list, written as an HTTP/1.1 head. Values are
/// bytes: one taken from a backend (a state's content type) may be any header value, not
/// only text.
pub struct WireHead {
    status: http::StatusCode,
    headers: Vec<(Cow<'static, str>, Cow<'static, [u8]>)>,
}

fn value_bytes(value: Cow<'static, str>) -> Cow<'static, [u8]> {
    match value {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

impl WireHead {
    /// The status line, `extra` (the connection's own lines: `Date`, `Connection`), the
    /// head's own headers and the blank line ending them. The connection's lines come right
    /// after the status line so that what follows them is the same for every client of a
    /// message, and can be made once (see [`single_event_answer`]).
    pub fn write_to(&self, wire: &mut BytesMut, extra: &[(&str, &[u8])]) {
        wire.put_slice(b"HTTP/1.1 ");
        wire.put_slice(self.status.as_str().as_bytes());
        wire.put_u8(b' ');
        wire.put_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        wire.put_slice(b"\r\n");
        for (name, value) in extra {
            put_header_line(wire, name, value);
        }
        self.write_headers_and_end(wire);
    }

    fn write_headers_and_end(&self, wire: &mut BytesMut) {
        for (name, value) in &self.headers {
            put_header_line(wire, name, value);
        }
        wire.put_slice(b"\r\n");
    }
}

fn put_header_line(wire: &mut BytesMut, name: &str, value: &[u8]) {
    wire.put_slice(name.as_bytes());
    wire.put_slice(b": ");
    wire.put_slice(value);
    wire.put_slice(b"\r\n");
}

/// A long poll's `200` answer carrying exactly one event after the client's cursor (no
/// gap, not `HEAD`, no CORS or private headers: the common case of a client that keeps up),
/// made once per message, where [`batch_response`] and [`prepare_response`] make an answer
/// per poll: every client parked on the topic gets the same bytes.
pub struct SingleEventAnswer {
    /// The head's own header lines, the blank line, the body.
    bytes: Bytes,
    body_len: usize,
}

impl SingleEventAnswer {
    /// Writes the whole answer: the status line, `Date`, `Connection`, then the made part.
    pub fn write_to(&self, wire: &mut BytesMut, date: &str, connection: &[u8]) {
        wire.put_slice(b"HTTP/1.1 200 OK\r\n");
        put_header_line(wire, "Date", date.as_bytes());
        put_header_line(wire, "Connection", connection);
        wire.put_slice(&self.bytes);
    }

    /// Room for the whole answer (the status line and the two lines take at most 80).
    pub fn wire_capacity(&self) -> usize {
        self.bytes.len() + 80
    }

    pub fn body_len(&self) -> usize {
        self.body_len
    }
}

/// The [`SingleEventAnswer`] of `message` (an event), made on first use and kept in its
/// encodings; `None` if it cannot be made (the caller builds the answer as usual).
pub fn single_event_answer(message: &Arc<Message>) -> Option<SingleEventAnswer> {
    let mut bytes = message
        .encodings
        .inline(super::wire::message_slot::LONG_POLL_SINGLE, || {
            let made = batch_response::<WireHead>(
                Mode::Events,
                message.cursor,
                std::slice::from_ref(message),
                false,
                0,
            )
            .and_then(|(mut head, body)| {
                prepare_response(&mut head, &body, false)?;
                // The body's length first (4 bytes, little-endian), for the delivery's
                // count: finding the head's end on every answer was ~200 instructions.
                let mut wire = BytesMut::with_capacity(BODY_LEN_PREFIX + 160 + body.len());
                wire.put_u32_le(u32::try_from(body.len()).map_err(|_| {
                    Error::explain(ErrorType::InternalError, "a single event's answer over 4 GiB")
                })?);
                head.write_headers_and_end(&mut wire);
                wire.put_slice(&body);
                Ok(wire.freeze())
            });
            // Empty: not made, and never to be (the same inputs would fail again).
            made.unwrap_or_default()
        });
    if bytes.len() < BODY_LEN_PREFIX {
        return None;
    }
    let body_len = bytes.get_u32_le() as usize;
    Some(SingleEventAnswer { bytes, body_len })
}

/// The length prefix of a [`SingleEventAnswer`]'s bytes in the message's encodings.
const BODY_LEN_PREFIX: usize = 4;

impl AnswerHead for WireHead {
    fn with_status(status: u16) -> Result<Self> {
        let status = http::StatusCode::from_u16(status)
            .map_err(|_| Error::explain(ErrorType::InternalError, "an answer's status"))?;
        Ok(WireHead {
            status,
            headers: Vec::with_capacity(8),
        })
    }
    fn status_code(&self) -> u16 {
        self.status.as_u16()
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(own, _)| own.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
    fn set(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()> {
        match self
            .headers
            .iter_mut()
            .find(|(own, _)| own.eq_ignore_ascii_case(name))
        {
            Some((_, own)) => *own = value_bytes(value),
            None => self.headers.push((Cow::Borrowed(name), value_bytes(value))),
        }
        Ok(())
    }
    fn append(&mut self, name: &'static str, value: Cow<'static, str>) -> Result<()> {
        self.headers.push((Cow::Borrowed(name), value_bytes(value)));
        Ok(())
    }
    fn from_response(response: ResponseHeader) -> Result<Self> {
        let mut head = WireHead::with_status(response.status.as_u16())?;
        for (name, value) in response.headers.iter() {
            head.headers.push((
                Cow::Owned(name.as_str().to_string()),
                Cow::Owned(value.as_bytes().to_vec()),
            ));
        }
        Ok(head)
    }
}

/// Today's `Date` value (RFC 9110 §6.6.1), formatted once a second per thread.
pub fn with_http_date<T>(use_date: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(formatted_at, date)| {
        if *formatted_at != second || date.is_empty() {
            *date = httpdate::fmt_http_date(now);
            *formatted_at = second;
        }
        use_date(date)
    })
}

/// Sets the `Content-Length` of a complete response; whether its body is to be sent (not
/// for `HEAD`, `204` and `304`, nor an empty one).
pub fn prepare_response<H: AnswerHead>(response: &mut H, body: &Bytes, head: bool) -> Result<bool> {
    let status = response.status_code();
    let no_body = head || status == 304 || status == 204;
    // A 204 carries no Content-Length at all, and a 304 may carry one only if it equals the
    // length a 200 would have (RFC 9110 §8.6), which this answer does not know.
    if status != 204 && status != 304 {
        response.set("Content-Length", Cow::Owned(body.len().to_string()))?;
    }
    Ok(!no_body && !body.is_empty())
}

/// Writes a complete response with a `Content-Length` body (empty for `HEAD` and `304`).
pub async fn respond(session: &mut Session, mut response: ResponseHeader, body: Bytes) -> Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    let send_body = prepare_response(&mut response, &body, head)?;
    session
        .write_response_header(Box::new(response), !send_body)
        .await?;
    if send_body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Marks a response as for this user only (RFC 9111 §5.2.2.7), keeping its other
/// directives: one authenticated by a cookie or a query token is otherwise storable by a
/// shared cache (only `Authorization` keeps them out, RFC 9111 §3.5).
pub fn make_private<H: AnswerHead>(response: &mut H) -> Result<()> {
    let current = response.get("cache-control").map(str::to_string);
    let value = match current {
        None => "private".to_string(),
        Some(value)
            if value
                .split(',')
                .any(|d| matches!(d.trim(), "private" | "no-store")) =>
        {
            return Ok(())
        }
        Some(value) => format!("private, {value}"),
    };
    response.set("Cache-Control", Cow::Owned(value))
}

/// A plain-text error or refusal that says why.
pub async fn respond_reason(
    session: &mut Session,
    status: u16,
    reason: &str,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    response.insert_header("Content-Type", "text/plain; charset=utf-8")?;
    response.insert_header("Cache-Control", "no-store")?;
    for (name, value) in extra {
        response.insert_header(*name, value.as_str())?;
    }
    respond(session, response, Bytes::from(format!("{reason}\n"))).await
}

/// A cursor as a client sends it back: bare, or as an ETag (`"…"`, `W/"…"`).
pub fn parse_cursor_token(token: &str) -> Option<Cursor> {
    // ASCII whitespace only (what may surround a header value): the Unicode-aware `trim`
    // was most of this function's cost, on every repeated poll.
    let token = token.trim_ascii();
    let token = token.strip_prefix("W/").unwrap_or(token);
    let token = token
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(token);
    token.parse().ok()
}

/// The SSE resume point: `Last-Event-ID` (what `EventSource` sends on reconnect) or
/// `?last_event_id=` (what a page can put on its first request). A token that does not
/// parse is an unknown cursor: the client is told to reset, which is safe, rather than
/// refused, which `EventSource` would treat as fatal.
pub fn sse_resume(request: &RequestHeader) -> Resume {
    let token = header(request, "last-event-id")
        .map(str::to_string)
        .or_else(|| query_param(request, "last_event_id").map(|t| t.into_owned()));
    match token {
        None => Resume::Latest,
        Some(token) if token.trim().is_empty() => Resume::Latest,
        Some(token) => parse_cursor_token(&token).map_or(Resume::Unknown, Resume::After),
    }
}

/// The polling transports' cursor: `?cursor=` first, else `If-None-Match` (its first entity
/// tag; `*` means none). A token that does not parse is a client error.
pub fn poll_cursor(request: &RequestHeader) -> std::result::Result<Option<Cursor>, String> {
    match query_param(request, "cursor") {
        Some(token) => cursor_token(&token),
        None => if_none_match_cursor(header(request, "if-none-match")),
    }
}

/// The cursor an `If-None-Match` value names (its first entity tag), as [`poll_cursor`] reads it.
pub fn if_none_match_cursor(value: Option<&str>) -> std::result::Result<Option<Cursor>, String> {
    match value {
        None => Ok(None),
        Some(list) => cursor_token(list.split(',').next().unwrap_or("").trim_ascii()),
    }
}

fn cursor_token(token: &str) -> std::result::Result<Option<Cursor>, String> {
    if token.is_empty() || token == "*" {
        return Ok(None);
    }
    parse_cursor_token(token).map(Some).ok_or_else(|| {
        format!("malformed cursor {token:?}: send back an ETag or cursor this server gave you")
    })
}

/// How long a long poll may be held: `?wait=` or `Prefer: wait=` in seconds (decimals
/// allowed), clamped to `cap`. `None` when the request names no wait.
pub fn requested_wait(
    request: &RequestHeader,
    cap: Duration,
) -> std::result::Result<Option<Duration>, String> {
    let raw = query_param(request, "wait").map(|w| w.into_owned()).or_else(|| {
        header(request, "prefer")?.split(',').find_map(|item| {
            let (name, value) = item.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().to_string())
        })
    });
    let Some(raw) = raw else {
        return Ok(None);
    };
    match raw.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Some(Duration::from_secs_f64(seconds.min(cap.as_secs_f64()))))
        }
        _ => Err(format!(
            "malformed wait {raw:?}: give a number of seconds, e.g. wait=30"
        )),
    }
}

/// Headers every polling answer carries; `cursor` as its text.
fn polling_headers<H: AnswerHead>(response: &mut H, cursor: &CursorText, mode: Mode) -> Result<()> {
    let mut etag = String::with_capacity(cursor.as_bytes().len() + 2);
    etag.push('"');
    cursor.push_to(&mut etag);
    etag.push('"');
    response.set("ETag", Cow::Owned(etag))?;
    response.set("Cache-Control", Cow::Borrowed("no-cache"))?;
    response.set(
        "X-Sidestream-Mode",
        Cow::Borrowed(match mode {
            Mode::State => "state",
            Mode::Events => "events",
        }),
    )
}

/// `200` with a state: the backend's own body and content type, the cursor as ETag, and
/// `Age` = seconds since the backend last confirmed it (so a client can see stale data).
pub fn state_response(topic: &Topic, message: &Message) -> Result<(ResponseHeader, Bytes)> {
    let mut response = ResponseHeader::build(200, Some(6))?;
    response.insert_header(
        "Content-Type",
        message
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    )?;
    polling_headers(&mut response, &message.cursor.text(), Mode::State)?;
    if let Some(last_success) = topic.upstream_health().last_success {
        response.insert_header(
            "Age",
            Instant::now().saturating_duration_since(last_success).as_secs(),
        )?;
    }
    if topic.is_stale() {
        // The backend is failing; this is the last good state (its age is in `Age`).
        response.insert_header("X-Sidestream-Stale", "true")?;
    }
    Ok((response, message.data.clone()))
}

/// `200` with an event batch: `{"cursor","messages":[{"id","event","data"}],"reset"}` (and
/// `"skipped"` after a gap), built
/// from each message's JSON entry (encoded once per message).
pub fn batch_response<H: AnswerHead>(
    mode: Mode,
    cursor: Cursor,
    messages: &[Arc<Message>],
    reset: bool,
    skipped: u64,
) -> Result<(H, Bytes)> {
    let entries: Vec<Bytes> = messages.iter().map(|m| super::wire::json::entry(m)).collect();
    let size: usize = entries.iter().map(|entry| entry.len() + 1).sum();
    let cursor = cursor.text();
    let mut body = BytesMut::with_capacity(size + 64);
    body.put_slice(b"{\"cursor\":\"");
    body.put_slice(cursor.as_bytes());
    body.put_slice(b"\",\"messages\":[");
    for (index, entry) in entries.iter().enumerate() {
        if index > 0 {
            body.put_u8(b',');
        }
        body.put_slice(entry);
    }
    body.put_slice(if reset {
        b"],\"reset\":true"
    } else {
        b"],\"reset\":false"
    });
    if skipped > 0 {
        // Messages the `drop_oldest` policy dropped before these, and history no longer has.
        body.put_slice(format!(",\"skipped\":{skipped}").as_bytes());
    }
    body.put_u8(b'}');
    let mut response = H::with_status(200)?;
    response.set("Content-Type", Cow::Borrowed("application/json"))?;
    polling_headers(&mut response, &cursor, mode)?;
    Ok((response, body.freeze()))
}

/// `304`: nothing newer than `cursor`.
pub fn not_modified<H: AnswerHead>(cursor: Cursor, mode: Mode) -> Result<H> {
    let mut response = H::with_status(304)?;
    polling_headers(&mut response, &cursor.text(), mode)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_head_is_the_head_a_response_header_writes() {
        let messages = [];
        let (mut wire, body): (WireHead, Bytes) =
            batch_response(Mode::Events, Cursor::test(7), &messages, true, 0).expect("a batch");
        let (mut header, same_body): (ResponseHeader, Bytes) =
            batch_response(Mode::Events, Cursor::test(7), &messages, true, 0).expect("a batch");
        assert_eq!(body, same_body);
        assert_eq!(
            &body[..],
            b"{\"cursor\":\"1000000-7\",\"messages\":[],\"reset\":true}"
        );
        make_private(&mut wire).expect("private");
        make_private(&mut header).expect("private");
        assert!(prepare_response(&mut wire, &body, false).expect("length"));
        assert!(prepare_response(&mut header, &body, false).expect("length"));
        let mut written = BytesMut::new();
        wire.write_to(&mut written, &[("Connection", b"close")]);
        let mut expected = BytesMut::new();
        expected.put_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\n");
        header.header_to_h1_wire(&mut expected);
        expected.put_slice(b"\r\n");
        assert_eq!(
            String::from_utf8_lossy(&written).to_ascii_lowercase(),
            String::from_utf8_lossy(&expected).to_ascii_lowercase()
        );
        assert_eq!(wire.get("cache-control"), Some("private, no-cache"));
    }

    #[test]
    fn a_single_event_answer_made_once_is_the_answer_made_per_poll() {
        let message = Arc::new(Message::new(
            Cursor::test(41),
            crate::hub::Payload {
                data: Bytes::from_static(b"{\"n\":1}"),
                ..crate::hub::Payload::default()
            },
        ));
        let made = single_event_answer(&message).expect("made");
        let mut once = BytesMut::new();
        made.write_to(&mut once, "Thu, 03 Dec 2026 16:00:00 GMT", b"keep-alive");
        let (mut head, body): (WireHead, Bytes) = batch_response(
            Mode::Events,
            message.cursor,
            std::slice::from_ref(&message),
            false,
            0,
        )
        .expect("a batch");
        assert!(prepare_response(&mut head, &body, false).expect("length"));
        let mut per_poll = BytesMut::new();
        head.write_to(
            &mut per_poll,
            &[
                ("Date", b"Thu, 03 Dec 2026 16:00:00 GMT"),
                ("Connection", b"keep-alive"),
            ],
        );
        per_poll.put_slice(&body);
        assert_eq!(String::from_utf8_lossy(&once), String::from_utf8_lossy(&per_poll));
        assert_eq!(made.body_len(), body.len());
        assert!(once.len() <= made.wire_capacity());
        assert!(
            once.ends_with(b"\"messages\":[{\"id\":\"1000000-41\",\"event\":\"message\",\"data\":{\"n\":1}}],\"reset\":false}")
        );
        // Made once: a second client gets the same bytes, and the message holds them.
        let again = single_event_answer(&message).expect("made");
        assert_eq!(again.bytes.as_ptr(), made.bytes.as_ptr());
        assert!(message.encodings.held_bytes() >= made.bytes.len());
    }

    #[test]
    fn a_wire_head_keeps_a_backend_value_that_is_not_text() {
        let mut response = ResponseHeader::build(200, None).expect("a header");
        let value = http::HeaderValue::from_bytes(b"text/plain; x=\xe9").expect("obs-text is allowed");
        response.insert_header("Content-Type", value).expect("set");
        let wire = WireHead::from_response(response).expect("any header value");
        let mut written = BytesMut::new();
        wire.write_to(&mut written, &[]);
        let expected = b"text/plain; x=\xe9";
        assert!(written.windows(expected.len()).any(|w| w == expected));
        assert_eq!(wire.get("content-type"), None, "not text, so not read as text");
    }

    #[test]
    fn cursor_tokens_may_be_quoted_or_weak() {
        let bare = parse_cursor_token("k3x9q1a-42").expect("bare");
        assert_eq!(parse_cursor_token("\"k3x9q1a-42\""), Some(bare));
        assert_eq!(parse_cursor_token(" W/\"k3x9q1a-42\" "), Some(bare));
        assert_eq!(parse_cursor_token("\"nope"), None);
    }
}
