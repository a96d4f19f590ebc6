//! Server-Sent Events: one chunked response per client, fed from its subscription.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::response::{sse_resume, take_connection};
use crate::config::TopicSpec;
use crate::hub::{CloseReason, Cursor, Delivery, Message, Mode, Subscribe, Topic};
use crate::metrics::{SubscriberGauge, METRICS};

/// Bytes gathered into one write when several messages are already queued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";

enum Step {
    Deliver(Delivery),
    Stale(bool),
    Keepalive,
    Drain,
    CredentialsExpired,
    ClientGone,
}

/// `retry:` spread by ±20 % per connection so that clients cut off together (a restart, a
/// drain) do not all come back in the same instant.
fn jittered_retry(retry: Duration) -> u64 {
    let ms = retry.as_millis() as f64;
    (ms * rand::random_range(0.8..1.2)).round() as u64
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Adds one message to a batch, preceded by a gap notice when messages were dropped.
fn append(batch: &mut BytesMut, message: &Message, skipped: u64, signal_gaps: bool) {
    if skipped > 0 && signal_gaps {
        let position = Cursor {
            seq: message.cursor.seq.saturating_sub(1),
            ..message.cursor
        };
        batch.put_slice(
            format!(
                "id: {position}\nevent: reset\ndata: {{\"cursor\":\"{position}\",\"skipped\":{skipped}}}\n\n"
            )
            .as_bytes(),
        );
    }
    batch.put_slice(&message.sse_frame);
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

/// The answer to an SSE request that cannot be served right now (over capacity, auth
/// service unreachable): `200` with a `retry:` hint and an immediate end, because any other
/// status makes browsers' `EventSource` give up for good.
pub async fn retry_later(session: &mut Session, retry: Duration, reason: &str) -> Result<()> {
    let mut response = ResponseHeader::build(200, Some(3))?;
    response.insert_header("Content-Type", "text/event-stream")?;
    response.insert_header("Cache-Control", "no-cache, no-transform")?;
    let reason = reason.replace(['\r', '\n'], " ");
    let body = Bytes::from(format!("retry: {}\n: {reason}\n\n", jittered_retry(retry)));
    super::response::respond(session, response, body).await
}

/// The process-wide drain: its signal, and the window over which streams are ended.
pub struct Drain<'a> {
    pub signal: &'a CancellationToken,
    /// Streams end at a random moment within this window after the signal, so that the
    /// clients' reconnections (to other pods) are spread rather than a storm.
    pub spread: Duration,
}

pub async fn serve(
    session: &mut Session,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    drain: &Drain<'_>,
    ends_at: Option<Instant>,
) -> Result<()> {
    let shutdown = drain.signal;
    let resume = sse_resume(session.req_header());
    let Subscribe {
        reset,
        backlog,
        subscription,
        ..
    } = topic.subscribe(resume);
    let topic_name: &str = &topic.key().name;
    let _connected = SubscriberGauge::new(topic_name, "sse");
    let deliveries = METRICS.deliveries.with_label_values(&[topic_name, "sse"]);
    let bytes_written = METRICS.bytes_written.with_label_values(&["sse"]);

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
    // Event topics tell the client when messages were dropped for it (`drop_oldest`): an
    // `event: reset` before the next message. State topics just move to the newest state.
    let signal_gaps = spec.mode() == Mode::Events;
    let mut stale = topic.watch_stale();
    if *stale.borrow_and_update() {
        session
            .write_response_body(Some(stale_frame(true)), false)
            .await?;
    }

    let mut stalled = false;
    // Set once the drain starts: when this stream ends. A stream opened during the drain
    // ends at once.
    let mut closing_at: Option<Instant> = None;
    let opened_during_drain = shutdown.is_cancelled();
    let end = loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if closing_at.is_none() => {
                let delay = if opened_during_drain {
                    Duration::ZERO
                } else {
                    drain.spread.mul_f64(rand::random_range(0.0..1.0))
                };
                closing_at = Some(Instant::now() + delay);
                continue;
            }
            _ = sleep_until_or_never(closing_at) => Step::Drain,
            _ = sleep_until_or_never(ends_at) => Step::CredentialsExpired,
            // Before deliveries: "fresh again" precedes the first new message.
            Ok(()) = stale.changed() => Step::Stale(*stale.borrow_and_update()),
            delivery = subscription.recv() => Step::Deliver(delivery),
            _ = tokio::time::sleep_until(last_write + spec.keepalive) => Step::Keepalive,
            _ = session.read_body_or_idle(true) => Step::ClientGone,
        };
        let chunk = match step {
            Step::Deliver(Delivery::Message { message, skipped }) => {
                // The common case is one message and no gap: its shared frame, no copy.
                // Otherwise one write for everything already queued, to spare syscalls.
                let single = skipped == 0 || !signal_gaps;
                let chunk = match subscription.try_recv() {
                    None if single => {
                        deliveries.inc();
                        message.sse_frame.clone()
                    }
                    first_next => {
                        let mut batch = BytesMut::with_capacity(MAX_BATCH_BYTES);
                        append(&mut batch, &message, skipped, signal_gaps);
                        let mut count = 1;
                        let mut pending = first_next;
                        while let Some(Delivery::Message { message, skipped }) = pending.take() {
                            append(&mut batch, &message, skipped, signal_gaps);
                            count += 1;
                            if batch.len() < MAX_BATCH_BYTES {
                                pending = subscription.try_recv();
                            }
                        }
                        deliveries.inc_by(count);
                        batch.freeze()
                    }
                };
                bytes_written.inc_by(chunk.len() as u64);
                chunk
            }
            Step::Deliver(Delivery::Closed(CloseReason::Overflow)) => {
                // The client fell too far behind under the `disconnect` policy: it reconnects
                // with Last-Event-ID and replays from history.
                break Some(Bytes::from_static(b": too slow, reconnect to resume\n\n"));
            }
            Step::Deliver(Delivery::Closed(CloseReason::TopicClosed)) | Step::Drain => {
                break Some(Bytes::from(format!(": draining\nretry: {retry_ms}\n\n")));
            }
            Step::CredentialsExpired => {
                // The client reconnects (with a fresh token, or gets its 401 then).
                break Some(Bytes::from_static(b": credentials expired\n\n"));
            }
            Step::Stale(now_stale) => stale_frame(now_stale),
            Step::Keepalive => Bytes::from_static(KEEPALIVE_FRAME),
            Step::ClientGone => break None,
        };
        // A client that stops reading fills its socket; the write deadline ends it there
        // (its queue meanwhile is bounded by the topic's policy).
        match tokio::time::timeout(
            spec.write_timeout,
            session.write_response_body(Some(chunk), false),
        )
        .await
        {
            Ok(written) => written?,
            Err(_) => {
                stalled = true;
                break None;
            }
        }
        last_write = Instant::now();
    };
    drop(subscription);
    match end {
        Some(goodbye) => {
            match tokio::time::timeout(
                spec.write_timeout,
                session.write_response_body(Some(goodbye), true),
            )
            .await
            {
                Ok(written) => written,
                Err(_) => {
                    drop(take_connection(session));
                    Ok(())
                }
            }
        }
        // A write was cut off mid-chunk: the connection is unusable; close it now.
        None if stalled => {
            drop(take_connection(session));
            Ok(())
        }
        None => {
            // Nobody is listening; the connection is not reusable either.
            session.set_keepalive(None);
            Ok(())
        }
    }
}
