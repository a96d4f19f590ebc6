//! Small helpers for complete (non-streaming) responses and for reading a client's cursor.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tokio::time::Instant;

use super::router::{header, query_param};
use crate::hub::{Cursor, Message, Mode, Resume, Topic};

/// Takes the client connection out of pingora, leaving a closed placeholder so that
/// pingora's end-of-request bookkeeping finds nothing to flush or reuse. Dropping what is
/// returned closes the socket at once, even with unsent bytes (a client that stopped reading).
pub fn take_connection(session: &mut Session) -> Box<pingora_core::protocols::http::ServerSession> {
    let mut placeholder =
        pingora_core::protocols::http::ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
    placeholder.set_keepalive(None);
    std::mem::replace(&mut session.downstream_session, Box::new(placeholder))
}

/// Sets the `Content-Length` of a complete response; whether its body is to be sent (not
/// for `HEAD`, `204` and `304`, nor an empty one).
pub fn prepare_response(response: &mut ResponseHeader, body: &Bytes, head: bool) -> Result<bool> {
    let status = response.status.as_u16();
    let no_body = head || status == 304 || status == 204;
    // A 204 carries no Content-Length at all, and a 304 may carry one only if it equals the
    // length a 200 would have (RFC 9110 §8.6), which this answer does not know.
    if status != 204 && status != 304 {
        response.insert_header("Content-Length", body.len())?;
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
pub fn make_private(response: &mut ResponseHeader) -> Result<()> {
    let current = response
        .headers
        .get("cache-control")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
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
    response.insert_header("Cache-Control", value)?;
    Ok(())
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
    let token = token.trim();
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

/// `"<cursor>"`, the ETag of a topic's state at `cursor`.
pub fn etag(cursor: Cursor) -> String {
    format!("\"{cursor}\"")
}

/// The polling transports' cursor: `?cursor=` first, else `If-None-Match` (its first entity
/// tag; `*` means none). A token that does not parse is a client error.
pub fn poll_cursor(request: &RequestHeader) -> std::result::Result<Option<Cursor>, String> {
    let token = match query_param(request, "cursor") {
        Some(token) => token.into_owned(),
        None => match header(request, "if-none-match") {
            None => return Ok(None),
            Some(list) => list.split(',').next().unwrap_or("").trim().to_string(),
        },
    };
    if token.is_empty() || token == "*" {
        return Ok(None);
    }
    parse_cursor_token(&token).map(Some).ok_or_else(|| {
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

/// Headers every polling answer carries.
fn polling_headers(response: &mut ResponseHeader, cursor: Cursor, mode: Mode) -> Result<()> {
    response.insert_header("ETag", etag(cursor))?;
    response.insert_header("Cache-Control", "no-cache")?;
    response.insert_header(
        "X-Sidestream-Mode",
        match mode {
            Mode::State => "state",
            Mode::Events => "events",
        },
    )?;
    Ok(())
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
    polling_headers(&mut response, message.cursor, Mode::State)?;
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
pub fn batch_response(
    mode: Mode,
    cursor: Cursor,
    messages: &[Arc<Message>],
    reset: bool,
    skipped: u64,
) -> Result<(ResponseHeader, Bytes)> {
    let entries: Vec<Bytes> = messages.iter().map(|m| super::wire::json::entry(m)).collect();
    let size: usize = entries.iter().map(|entry| entry.len() + 1).sum();
    let mut body = BytesMut::with_capacity(size + 64);
    body.put_slice(format!("{{\"cursor\":\"{cursor}\",\"messages\":[").as_bytes());
    for (index, entry) in entries.iter().enumerate() {
        if index > 0 {
            body.put_u8(b',');
        }
        body.put_slice(entry);
    }
    body.put_slice(format!("],\"reset\":{reset}").as_bytes());
    if skipped > 0 {
        // Messages the `drop_oldest` policy dropped before these, and history no longer has.
        body.put_slice(format!(",\"skipped\":{skipped}").as_bytes());
    }
    body.put_u8(b'}');
    let mut response = ResponseHeader::build(200, Some(5))?;
    response.insert_header("Content-Type", "application/json")?;
    polling_headers(&mut response, cursor, mode)?;
    Ok((response, body.freeze()))
}

/// `304`: nothing newer than `cursor`.
pub fn not_modified(cursor: Cursor, mode: Mode) -> Result<ResponseHeader> {
    let mut response = ResponseHeader::build(304, Some(4))?;
    polling_headers(&mut response, cursor, mode)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_tokens_may_be_quoted_or_weak() {
        let bare = parse_cursor_token("k3x9q1a-42").expect("bare");
        assert_eq!(parse_cursor_token("\"k3x9q1a-42\""), Some(bare));
        assert_eq!(parse_cursor_token(" W/\"k3x9q1a-42\" "), Some(bare));
        assert_eq!(parse_cursor_token("\"nope"), None);
    }
}
