//! Server-Sent Events: one chunked response per client, fed from its subscription.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{Expiry, Lapse};
use super::connection_limit::{self, ConnectionTicket};
use super::cors::CorsStamp;
use super::direct::{DirectWriter, Socket, SocketHandle};
use super::in_flight::InFlightGuard;
use super::response::{make_private, sse_resume, take_connection, with_http_date, AnswerHead, WireHead};
use super::wire::patch_slot;
use super::wire::sse::{self as wire_sse, encode_event, http_chunk, put_http_chunk};
use crate::config::TopicSpec;
use crate::hub::{
    CloseReason, Cursor, Delivery, DeltaCursor, DeltaStep, DirectSink, Message, Mode, Resume, Subscribe,
    Subscription, Topic,
};
use crate::metrics::{SubscriberGauge, METRICS};

/// Bytes gathered into one write when several messages are already queued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// `: keepalive\n\n` as one chunk.
const KEEPALIVE_CHUNK: &[u8] = b"d\r\n: keepalive\n\n\r\n";

enum Step {
    Deliver(Delivery),
    /// A direct write left bytes to finish.
    Finish,
    Stale(bool),
    Keepalive,
    Drain,
    CredentialsLapsed(Lapse),
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

/// When the stream's credentials lapse, or never (no auth, or nothing that lapses).
pub async fn lapsed_or_never(expiry: Option<&Expiry>) -> Lapse {
    match expiry {
        Some(expiry) => expiry.lapsed().await,
        None => std::future::pending().await,
    }
}

/// `event: patch` with the patch as `data:` and the message's cursor as `id:`. Patches are
/// always named `patch`, whatever the topic's `event` (full states keep that name), so a
/// client tells them apart by name alone.
fn patch_event(cursor: Cursor, patch: &[u8]) -> Bytes {
    encode_event(&cursor, Some("patch"), patch)
}

/// The SSE event of `message` for this client: its patch for a delta client that holds
/// its base, else the full state's shared frame.
fn event_of(deltas: Option<&DeltaCursor>, message: &Message) -> Bytes {
    match deltas.map(|deltas| deltas.step(message)) {
        Some(DeltaStep::Patch(delta)) => delta.encodings.inline(patch_slot::SSE_EVENT, || {
            patch_event(message.cursor, &delta.patch)
        }),
        Some(DeltaStep::ResumePatch(patch)) => patch_event(message.cursor, &patch),
        Some(DeltaStep::Full) | None => wire_sse::event(message),
    }
}

/// [`event_of`] as one HTTP chunk, shared by every client that gets the same.
fn chunk_of(deltas: Option<&DeltaCursor>, message: &Message) -> Bytes {
    match deltas.map(|deltas| deltas.step(message)) {
        Some(DeltaStep::Patch(delta)) => delta.encodings.inline(patch_slot::SSE_CHUNK, || {
            http_chunk(&patch_event(message.cursor, &delta.patch))
        }),
        Some(DeltaStep::ResumePatch(patch)) => http_chunk(&patch_event(message.cursor, &patch)),
        Some(DeltaStep::Full) | None => wire_sse::chunk(message),
    }
}

/// Adds one message to a batch, preceded by a gap notice when messages were dropped.
fn append(
    batch: &mut BytesMut,
    message: &Message,
    skipped: u64,
    signal_gaps: bool,
    deltas: Option<&DeltaCursor>,
) {
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
    batch.put_slice(&event_of(deltas, message));
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
pub struct Drain {
    pub signal: CancellationToken,
    /// Streams end at a random moment within this window after the signal, so that the
    /// clients' reconnections (to other pods) are spread rather than a storm.
    pub spread: Duration,
}

/// Answers an SSE request: takes the connection out of pingora and hands it to [`start`].
/// A held stream then costs its socket, its queue and a small task, not a whole pingora
/// request (whose state is several times larger and is polled through on every wake-up).
pub async fn serve(
    session: &mut Session,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    drain: &Drain,
    expiry: Option<Expiry>,
    in_flight: InFlightGuard,
    private: bool,
) -> Result<()> {
    let deltas = match super::delta::requested(session.req_header(), spec.hub.deltas) {
        Ok(deltas) => deltas,
        Err(reason) => return super::response::respond_reason(session, 400, &reason, &[]).await,
    };
    if session.req_header().method == http::Method::HEAD {
        // The headers a GET would get, and no body (RFC 9110 §9.3.2): the request ends here
        // and the connection stays usable.
        let response: ResponseHeader = stream_head(private)?;
        return session.write_response_header(Box::new(response), true).await;
    }
    let resume = sse_resume(session.req_header());
    // The CORS module sees no header written off pingora: the stamp it made goes along.
    let cors = CorsStamp::take(session);
    let http1 = match *take_connection(session) {
        ServerSession::H1(http1) => http1,
        _ => return Ok(()),
    };
    let opening = Opening {
        keep_alive: http1.will_keepalive(),
        resume,
        cors,
        deltas,
        private,
        expiry,
        in_flight,
    };
    start(http1.into_inner(), topic, spec, drain, opening)
}

/// What a new stream's request decided, however it was read (through pingora, or by the
/// `sse_lane` before any pingora session exists).
pub struct Opening {
    /// The connection may carry another request after this stream (`Connection:` line).
    pub keep_alive: bool,
    pub resume: Resume,
    pub cors: CorsStamp,
    /// `?delta=json-patch` was asked for (and the topic offers it).
    pub deltas: bool,
    /// `Cache-Control: private` (an authenticated answer).
    pub private: bool,
    pub expiry: Option<Expiry>,
    pub in_flight: InFlightGuard,
}

/// Subscribes and hands `stream` to a small task of its own, which writes the response head
/// together with the first chunk (the `retry:` hint, a reset, the backlog).
pub fn start(
    stream: Stream,
    topic: Arc<Topic>,
    spec: &TopicSpec,
    drain: &Drain,
    opening: Opening,
) -> Result<()> {
    let mut head: WireHead = stream_head(opening.private)?;
    head.set("Transfer-Encoding", Cow::Borrowed("chunked"))?;
    opening.cors.apply(&mut head)?;
    let (subscribed, deltas) = if opening.deltas {
        let (subscribed, deltas) = topic.subscribe_deltas(opening.resume);
        (subscribed, Some(deltas))
    } else {
        (topic.subscribe(opening.resume), None)
    };
    let Subscribe {
        reset,
        backlog,
        subscription,
        ..
    } = subscribed;

    let retry_ms = jittered_retry(spec.retry);
    let mut events = BytesMut::new();
    events.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    if let Some(position) = reset {
        events.put_slice(&reset_frame(position));
    }
    for message in &backlog {
        events.put_slice(&event_of(deltas.as_ref(), message));
    }
    backlog
        .first()
        .inspect(|m| crate::metrics::delivered(&topic, m, backlog.len() as u64));
    drop(backlog);

    // The head and the first chunk leave in one write: a head written through pingora went
    // out alone, one more send (and one more read for the client) per connection.
    let connection: &[u8] = if opening.keep_alive {
        b"keep-alive"
    } else {
        b"close"
    };
    let mut first = BytesMut::with_capacity(256 + events.len() + 12);
    with_http_date(|date| {
        head.write_to(
            &mut first,
            &[("Date", date.as_bytes()), ("Connection", connection)],
        )
    });
    put_http_chunk(&mut first, &events);
    let task = SseStream {
        topic,
        subscription,
        keepalive: spec.keepalive,
        write_timeout: spec.write_timeout,
        signal_gaps: spec.mode() == Mode::Events,
        retry_ms,
        drain_signal: drain.signal.clone(),
        drain_spread: drain.spread,
        expiry: opening.expiry,
        deltas,
        _in_flight: opening.in_flight,
        _connection: connection_limit::hold_connection(),
    };
    let fut = task.run(stream, first.freeze());
    tokio::spawn(fut);
    Ok(())
}

/// An SSE answer's own headers, as pingora's header (`HEAD`) or as the head written with the
/// first chunk.
fn stream_head<H: AnswerHead>(private: bool) -> Result<H> {
    let mut head = H::with_status(200)?;
    head.set("Content-Type", Cow::Borrowed("text/event-stream"))?;
    head.set("Cache-Control", Cow::Borrowed("no-cache, no-transform"))?;
    head.set("X-Accel-Buffering", Cow::Borrowed("no"))?;
    if private {
        make_private(&mut head)?;
    }
    Ok(head)
}

/// One SSE client after its request: everything it needs, nothing of pingora's.
struct SseStream {
    topic: Arc<Topic>,
    subscription: Subscription,
    keepalive: Duration,
    write_timeout: Duration,
    /// Event topics tell the client when messages were dropped for it (`drop_oldest`): an
    /// `event: reset` before the next message. State topics just move to the newest state.
    signal_gaps: bool,
    retry_ms: u64,
    drain_signal: CancellationToken,
    drain_spread: Duration,
    expiry: Option<Expiry>,
    /// `?delta=json-patch`: the state this client holds, which decides patch or full state.
    deltas: Option<DeltaCursor>,
    /// Keeps a drain waiting for this stream, and the connection counted under the limits.
    _in_flight: InFlightGuard,
    _connection: Option<Arc<ConnectionTicket>>,
}

impl SseStream {
    /// `first`: the response head and the first chunk, as they go on the wire.
    async fn run(self, stream: Stream, first: Bytes) {
        let topic_name: &str = &self.topic.key().name;
        let _connected = SubscriberGauge::new(&self.topic, "sse");
        let deliveries = METRICS.deliveries.with_label_values(&[topic_name, "sse"]);
        let bytes_written = METRICS.bytes_written.with_label_values(&["sse"]);
        // Shared with the publishing task, which writes messages straight into it while this
        // task waits (see `direct`). The read below is a `select!` branch, dropped before
        // any write of this task's.
        let socket = Socket::new(stream);
        let mut stream = SocketHandle(socket.clone());
        if !write_chunk(&mut stream, first, self.write_timeout).await {
            return;
        }
        let mut last_write = Instant::now();
        let mut stale = self.topic.watch_stale();
        let stale_sent = Arc::new(AtomicBool::new(*stale.borrow_and_update()));
        if stale_sent.load(Ordering::Relaxed)
            && !write_chunk(&mut stream, http_chunk(&stale_frame(true)), self.write_timeout).await
        {
            return;
        }
        // A delta client's frames depend on what it holds, and one whose credentials lapse
        // must not be written to after the lapse: both keep to their own task.
        if self.deltas.is_none() && self.expiry.is_none() {
            self.subscription.set_direct_sink(Arc::new(SseSink {
                writer: DirectWriter {
                    socket: socket.clone(),
                    topic: self.topic.clone(),
                    deliveries: deliveries.clone(),
                    bytes_written: bytes_written.clone(),
                },
                stale_sent: stale_sent.clone(),
            }));
        }
        // Set once the drain starts: when this stream ends. A stream opened during the drain
        // ends at once.
        let mut closing_at: Option<Instant> = None;
        let opened_during_drain = self.drain_signal.is_cancelled();
        // A client sends nothing after its request; a read that returns is its departure.
        let mut probe = [0u8; 1];
        let end = loop {
            let step = tokio::select! {
                biased;
                _ = self.drain_signal.cancelled(), if closing_at.is_none() => {
                    let delay = if opened_during_drain {
                        Duration::ZERO
                    } else {
                        self.drain_spread.mul_f64(rand::random_range(0.0..1.0))
                    };
                    closing_at = Some(Instant::now() + delay);
                    continue;
                }
                _ = sleep_until_or_never(closing_at) => Step::Drain,
                lapse = lapsed_or_never(self.expiry.as_ref()) => Step::CredentialsLapsed(lapse),
                // Before deliveries: "fresh again" precedes the first new message.
                Ok(()) = stale.changed() => Step::Stale(*stale.borrow_and_update()),
                delivery = self.subscription.recv() => Step::Deliver(delivery),
                () = socket.unfinished() => Step::Finish,
                _ = tokio::time::sleep_until(last_write + self.keepalive) => Step::Keepalive,
                _ = stream.read(&mut probe) => Step::ClientGone,
            };
            if !matches!(step, Step::Deliver(_) | Step::Finish) {
                // Whatever this task writes now must not meet a direct write halfway.
                self.subscription.claim();
            }
            let chunk = match step {
                Step::Deliver(Delivery::Message { message, skipped }) => {
                    // The common case is one message and no gap: its shared chunk, no copy.
                    // Otherwise one write for everything already queued, to spare syscalls.
                    let single = skipped == 0 || !self.signal_gaps;
                    match self.subscription.try_recv() {
                        None if single => {
                            deliveries.inc();
                            crate::metrics::delivered(&self.topic, &message, 1);
                            chunk_of(self.deltas.as_ref(), &message)
                        }
                        first_next => {
                            let mut batch = BytesMut::with_capacity(MAX_BATCH_BYTES);
                            let deltas = self.deltas.as_ref();
                            append(&mut batch, &message, skipped, self.signal_gaps, deltas);
                            let mut count = 1;
                            let mut pending = first_next;
                            while let Some(Delivery::Message { message, skipped }) = pending.take() {
                                append(&mut batch, &message, skipped, self.signal_gaps, deltas);
                                count += 1;
                                if batch.len() < MAX_BATCH_BYTES {
                                    pending = self.subscription.try_recv();
                                }
                            }
                            deliveries.inc_by(count);
                            crate::metrics::delivered(&self.topic, &message, count);
                            http_chunk(&batch)
                        }
                    }
                }
                Step::Deliver(Delivery::Closed(CloseReason::Overflow)) => {
                    // The client fell too far behind under the `disconnect` policy: it
                    // reconnects with Last-Event-ID and replays from history.
                    break Some(Bytes::from_static(b": too slow, reconnect to resume\n\n"));
                }
                Step::Deliver(Delivery::Closed(CloseReason::TopicClosed)) | Step::Drain => {
                    break Some(Bytes::from(format!(": draining\nretry: {}\n\n", self.retry_ms)));
                }
                Step::CredentialsLapsed(lapse) => {
                    if let Some(expiry) = &self.expiry {
                        expiry.record(&lapse);
                    }
                    // The client reconnects (with a fresh token, or gets its 401/403 then).
                    break Some(match lapse {
                        Lapse::Expired => Bytes::from_static(b": credentials expired\n\n"),
                        Lapse::Revoked(_) => Bytes::from_static(b": access revoked\n\n"),
                    });
                }
                Step::Stale(now_stale) => {
                    // Marked only once written: until then messages wait in the queue, so
                    // the client learns of the flip before the message that follows it.
                    if !write_chunk(
                        &mut stream,
                        http_chunk(&stale_frame(now_stale)),
                        self.write_timeout,
                    )
                    .await
                    {
                        break None;
                    }
                    stale_sent.store(now_stale, Ordering::Relaxed);
                    last_write = Instant::now();
                    continue;
                }
                Step::Finish => Bytes::new(),
                Step::Keepalive => match socket.last_direct_write() {
                    // Messages went out directly since: no comment is due yet.
                    Some(direct) if direct > last_write => {
                        last_write = direct;
                        continue;
                    }
                    _ => Bytes::from_static(KEEPALIVE_CHUNK),
                },
                Step::ClientGone => break None,
            };
            let length = chunk.len();
            // A client that stops reading fills its socket; the write deadline ends it there
            // (its queue meanwhile is bounded by the topic's policy).
            if !write_chunk(&mut stream, chunk, self.write_timeout).await {
                break None;
            }
            bytes_written.inc_by(length as u64);
            self.topic.stats().wrote(length);
            last_write = Instant::now();
        };
        if let Some(goodbye) = end {
            let mut last = BytesMut::from(&http_chunk(&goodbye)[..]);
            last.put_slice(b"0\r\n\r\n");
            if write_chunk(&mut stream, last.freeze(), self.write_timeout).await {
                let _ = tokio::time::timeout(self.write_timeout, stream.shutdown()).await;
            }
        }
        // Dropping the stream closes the socket, at once even with unsent bytes (a client
        // that stopped reading).
    }
}

/// Hands the shared chunk of a message straight to the socket of a parked SSE client.
struct SseSink {
    writer: DirectWriter,
    /// The stale flag as this client was last told it: a flip not yet told sends the
    /// message through the queue, behind the notice.
    stale_sent: Arc<AtomicBool>,
}

impl DirectSink for SseSink {
    fn offer(&self, message: &Arc<Message>) -> bool {
        if self.writer.topic.is_stale() != self.stale_sent.load(Ordering::Relaxed) {
            return false;
        }
        self.writer.write(message, &wire_sse::chunk(message))
    }

    fn prefetch(&self) {
        crate::hub::prefetch::prefetch(Arc::as_ptr(&self.stale_sent));
        self.writer.prefetch();
    }
}

/// Writes and flushes one chunk within `limit`; `false` when the client is gone or stalled.
async fn write_chunk(writer: &mut (impl AsyncWrite + Unpin), chunk: Bytes, limit: Duration) -> bool {
    let write = async {
        writer.write_all(&chunk).await?;
        writer.flush().await
    };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keepalive_constant_is_the_chunk_of_its_comment() {
        assert_eq!(
            &http_chunk(b": keepalive\n\n")[..],
            KEEPALIVE_CHUNK,
            "the constant is the chunk of its comment"
        );
    }
}
