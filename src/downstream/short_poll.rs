//! Short polling: the latest state straight from the hub, never a backend request per
//! client. Event topics answer with the batch after the client's cursor, without waiting.

use std::sync::Arc;

use bytes::Bytes;
use pingora_error::Result;
use pingora_proxy::Session;

use super::response::{
    batch_response, make_private, not_modified, poll_cursor, respond, respond_reason, state_response,
};
use crate::config::TopicSpec;
use crate::hub::{Mode, Resume, Subscribe, Topic};

/// `private`: the request was authenticated (see [`make_private`]).
pub async fn serve(session: &mut Session, topic: Arc<Topic>, spec: &TopicSpec, private: bool) -> Result<()> {
    // The instance lingers from the last request, so pollers alone keep it (and its
    // upstream) alive.
    topic.touch();
    let cursor = match poll_cursor(session.req_header()) {
        Ok(cursor) => cursor,
        Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
    };
    let Some(latest) = topic.latest() else {
        let retry_after = spec.retry.as_secs().max(1).to_string();
        let reason = format!(
            "topic {} has no data from the backend yet; retry shortly",
            topic.key()
        );
        return respond_reason(session, 503, &reason, &[("Retry-After", retry_after)]).await;
    };
    let (mut response, body) = match spec.mode() {
        Mode::State => {
            if cursor == Some(latest.cursor) || if_none_match_any(session) {
                (not_modified(latest.cursor, Mode::State)?, Bytes::new())
            } else {
                state_response(&topic, &latest)?
            }
        }
        Mode::Events => {
            let Subscribe {
                reset,
                backlog,
                start,
                ..
            } = topic.subscribe(cursor.map_or(Resume::Unknown, Resume::After));
            if cursor.is_some() && reset.is_none() && backlog.is_empty() {
                (not_modified(start, Mode::Events)?, Bytes::new())
            } else {
                let last = backlog.last().map_or(reset.unwrap_or(start), |m| m.cursor);
                // No cursor is not a reset: the client simply starts with what history holds.
                let reset = reset.is_some() && cursor.is_some();
                batch_response(Mode::Events, last, &backlog, reset, 0)?
            }
        }
    };
    if private {
        make_private(&mut response)?;
    }
    respond(session, response, body).await
}

/// `If-None-Match: *` matches any current representation.
fn if_none_match_any(session: &Session) -> bool {
    super::router::header(session.req_header(), "if-none-match").is_some_and(|v| v.trim() == "*")
}
