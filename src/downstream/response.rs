//! Small helpers for complete (non-streaming) responses and for reading a client's cursor.

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::router::{header, query_param};
use crate::hub::{Cursor, Resume};

/// Writes a complete response with a `Content-Length` body (empty for `HEAD` and `304`).
pub async fn respond(session: &mut Session, mut response: ResponseHeader, body: Bytes) -> Result<()> {
    let head = session.req_header().method == http::Method::HEAD;
    let no_body = head || response.status.as_u16() == 304;
    response.insert_header(
        "Content-Length",
        if response.status.as_u16() == 304 {
            0
        } else {
            body.len()
        },
    )?;
    let send_body = !no_body && !body.is_empty();
    session
        .write_response_header(Box::new(response), !send_body)
        .await?;
    if send_body {
        session.write_response_body(Some(body), true).await?;
    }
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
