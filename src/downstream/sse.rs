//! Server-Sent Events: one chunked response per client, fed from its subscription.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::response::sse_resume;
use crate::config::TopicSpec;
use crate::hub::{CloseReason, Cursor, Delivery, Subscribe, Topic};

/// Bytes gathered into one write when several messages are already queued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";

enum Step {
    Deliver(Delivery),
    Stale(bool),
    Keepalive,
    Drain,
    ClientGone,
}

/// `retry:` spread by ±20 % per connection so that clients cut off together (a restart, a
/// drain) do not all come back in the same instant.
fn jittered_retry(retry: Duration) -> u64 {
    let ms = retry.as_millis() as f64;
    (ms * rand::random_range(0.8..1.2)).round() as u64
}

/// `event: stale` when the upstream starts failing (the last good data keeps being served)
/// and again with `false` when it recovers. No `id:`, so the client's cursor is untouched.
fn stale_frame(stale: bool) -> Bytes {
    Bytes::from(format!("event: stale\ndata: {{\"stale\":{stale}}}\n\n"))
}

pub fn reset_frame(position: Cursor) -> Bytes {
    Bytes::from(format!(
        "id: {position}\nevent: reset\ndata: {{\"cursor\":\"{position}\"}}\n\n"
    ))
}

pub async fn serve(
    session: &mut Session,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    shutdown: &CancellationToken,
) -> Result<()> {
    let resume = sse_resume(session.req_header());
    let Subscribe {
        reset,
        backlog,
        subscription,
        ..
    } = topic.subscribe(resume);

    let mut response = ResponseHeader::build(200, Some(5))?;
    response.insert_header("Content-Type", "text/event-stream")?;
    response.insert_header("Cache-Control", "no-cache, no-transform")?;
    response.insert_header("X-Accel-Buffering", "no")?;
    // pingora only flushes per write with chunked framing; a Content-Length body would sit
    // in its buffer until complete.
    response.insert_header("Transfer-Encoding", "chunked")?;
    session.write_response_header(Box::new(response), false).await?;

    let retry_ms = jittered_retry(spec.retry);
    let mut first = BytesMut::new();
    first.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    if let Some(position) = reset {
        first.put_slice(&reset_frame(position));
    }
    for message in &backlog {
        first.put_slice(&message.sse_frame);
    }
    drop(backlog);
    session.write_response_body(Some(first.freeze()), false).await?;
    let mut last_write = Instant::now();
    let mut stale = topic.watch_stale();
    if *stale.borrow_and_update() {
        session
            .write_response_body(Some(stale_frame(true)), false)
            .await?;
    }

    let end = loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Step::Drain,
            // Before deliveries: "fresh again" precedes the first new message.
            Ok(()) = stale.changed() => Step::Stale(*stale.borrow_and_update()),
            delivery = subscription.recv() => Step::Deliver(delivery),
            _ = tokio::time::sleep_until(last_write + spec.keepalive) => Step::Keepalive,
            _ = session.read_body_or_idle(true) => Step::ClientGone,
        };
        let chunk = match step {
            Step::Deliver(Delivery::Message { message, .. }) => {
                // One write for everything already queued, to spare syscalls under bursts.
                match subscription.try_recv() {
                    None => message.sse_frame.clone(),
                    Some(next) => {
                        let mut batch = BytesMut::with_capacity(MAX_BATCH_BYTES);
                        batch.put_slice(&message.sse_frame);
                        let mut pending = Some(next);
                        while let Some(delivery) = pending.take() {
                            match delivery {
                                Delivery::Message { message, .. } => batch.put_slice(&message.sse_frame),
                                Delivery::Closed(_) => break,
                            }
                            if batch.len() < MAX_BATCH_BYTES {
                                pending = subscription.try_recv();
                            }
                        }
                        batch.freeze()
                    }
                }
            }
            Step::Deliver(Delivery::Closed(CloseReason::Overflow)) => {
                // The client fell too far behind under the `disconnect` policy: it reconnects
                // with Last-Event-ID and replays from history.
                break Some(Bytes::from_static(b": too slow, reconnect to resume\n\n"));
            }
            Step::Deliver(Delivery::Closed(CloseReason::TopicClosed)) | Step::Drain => {
                break Some(Bytes::from(format!(": draining\nretry: {retry_ms}\n\n")));
            }
            Step::Stale(now_stale) => stale_frame(now_stale),
            Step::Keepalive => Bytes::from_static(KEEPALIVE_FRAME),
            Step::ClientGone => break None,
        };
        session.write_response_body(Some(chunk), false).await?;
        last_write = Instant::now();
    };
    drop(subscription);
    match end {
        Some(goodbye) => session.write_response_body(Some(goodbye), true).await,
        None => {
            // Nobody is listening; the connection is not reusable either.
            session.set_keepalive(None);
            Ok(())
        }
    }
}
