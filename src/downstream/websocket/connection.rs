//! One WebSocket client: hub messages out (pre-encoded), client messages in, heartbeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, StreamExt};
use pingora_core::protocols::Stream;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yawc::close::CloseCode;
use yawc::frame::{Frame, OpCode};
use yawc::{Options, Role, WebSocket, WebSocketError};

use super::close::{close_frame, close_reason};

use super::super::auth::{Expiry, Lapse};
use super::super::sse::lapsed_or_never;
use super::handshake::Deflate;
use super::inbound::{forward, Inbound, RateLimit};
use super::io::{share, RawWriter, SharedStream};
use crate::config::Envelope;
use crate::config::WebsocketSpec;
use crate::downstream::wire::websocket::{encode_frame, message_frame, WindowBits};
use crate::hub::{CloseReason, Cursor, Delivery, Message, Mode, Subscribe, Subscription};
use crate::metrics::{SubscriberGauge, METRICS};

/// How long to wait for the client's half of a close handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Client messages POSTed to the backend at once per connection. When this many are in
/// flight, the connection stops reading the client's frames until one is answered (the
/// client's further messages wait in its socket: TCP backpressure, nothing dropped);
/// deliveries and pings go on meanwhile.
const MAX_INBOUND_IN_FLIGHT: usize = 8;

/// The backend's replies to client messages, in the order the messages came.
type InboundReplies =
    FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>>;

/// Most messages gathered into one write when several are queued.
const MAX_BATCH: usize = 64;

pub enum Feed {
    Topic {
        subscribed: Subscribe,
        inbound: Option<Arc<Inbound>>,
        /// `?delta=json-patch` (JSON envelope): the state this client holds.
        deltas: Option<crate::hub::DeltaCursor>,
    },
    Echo,
}

enum Event {
    Shutdown,
    Delivery(Delivery),
    /// A direct write left bytes to finish.
    Finish,
    Frame(Result<Frame, WebSocketError>),
    PingDue,
    PongOverdue,
    InboundReply(Option<Bytes>),
    CredentialsLapsed(Lapse),
}

pub struct Connection {
    ws: WebSocket<SharedStream>,
    raw: RawWriter,
    /// Whether yawc has written a close frame (so one must not be sent twice).
    close_sent: Arc<AtomicBool>,
    spec: WebsocketSpec,
    /// How long one write to a client may take before the client is given up on.
    write_timeout: Duration,
    /// The window hub messages are deflated with for this client; `None` = sent plain.
    deflate: Option<WindowBits>,
    feed: Feed,
    /// When the client's credentials expire (the connection is closed with 1008 then).
    expiry: Option<Expiry>,
    inbound_rate: RateLimit,
    /// Inbound POSTs in flight, off the connection loop (bounded by MAX_INBOUND_IN_FLIGHT).
    inbound_replies: InboundReplies,
    /// This connection's metric handles, looked up once (not per write).
    counters: WriteCounters,
}

/// The counters every write bumps, resolved from their labels once per connection.
struct WriteCounters {
    /// Hub messages delivered (none for the echo route).
    deliveries: Option<prometheus::IntCounter>,
    bytes_written: prometheus::IntCounter,
}

impl WriteCounters {
    fn new(feed: &Feed) -> Self {
        WriteCounters {
            deliveries: match feed {
                Feed::Topic { subscribed, .. } => Some(
                    METRICS
                        .deliveries
                        .with_label_values(&[&subscribed.subscription.topic().key().name, "websocket"]),
                ),
                Feed::Echo => None,
            },
            bytes_written: METRICS.bytes_written.with_label_values(&["websocket"]),
        }
    }
}

impl Connection {
    pub fn new(
        stream: Stream,
        deflate: Option<&Deflate>,
        spec: &WebsocketSpec,
        write_timeout: Duration,
        feed: Feed,
        expiry: Option<Expiry>,
    ) -> Result<Self, WebSocketError> {
        // yawc refuses a frame whose payload reaches its limit, so allow exactly the maximum.
        // The message limit applies after inflating, so a deflate bomb stops at it.
        let frame_limit = spec.max_frame_bytes.saturating_add(1);
        let message_limit = spec.max_message_bytes.saturating_add(1);
        let options = Options::default()
            .with_utf8()
            .with_limits(frame_limit, message_limit)
            // yawc starts with 8 KiB each way; most connections are idle listeners, hub
            // frames bypass yawc's writer, and both buffers grow when a frame needs it.
            .with_read_buffer_capacity(256)
            .with_write_buffer_capacity(128)
            .with_low_latency_compression();
        let (shared, raw, close_sent) = share(stream);
        let extension = deflate.map(|deflate| deflate.response.as_str());
        let ws = WebSocket::from_stream_with_extensions(shared, Role::Server, extension, options)?;
        Ok(Connection {
            ws,
            raw,
            close_sent,
            spec: spec.clone(),
            write_timeout,
            deflate: deflate.map(|deflate| deflate.window),
            expiry,
            inbound_rate: RateLimit::new(spec.inbound_messages_per_second),
            inbound_replies: FuturesOrdered::new(),
            counters: WriteCounters::new(&feed),
            feed,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let _connected = match &self.feed {
            Feed::Topic { subscribed, .. } => {
                Some(SubscriberGauge::new(subscribed.subscription.topic(), "websocket"))
            }
            Feed::Echo => None,
        };
        if self.send_backlog().await.is_err() {
            return;
        }
        self.go_direct();
        let mut next_ping = Instant::now() + self.spec.ping_interval;
        let mut pong_due: Option<Instant> = None;
        loop {
            let event = {
                let subscription = match &self.feed {
                    Feed::Topic { subscribed, .. } => Some(&subscribed.subscription),
                    Feed::Echo => None,
                };
                // With MAX_INBOUND_IN_FLIGHT POSTs out, reading pauses (backpressure on the
                // client's messages); its pong then waits in the socket behind them, so the
                // pong deadline only runs while reading does (frames are read first: biased).
                let reading = self.inbound_replies.len() < MAX_INBOUND_IN_FLIGHT;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => Event::Shutdown,
                    frame = self.ws.next_frame(), if reading => Event::Frame(frame),
                    Some(reply) = self.inbound_replies.next(), if !self.inbound_replies.is_empty() => Event::InboundReply(reply),
                    delivery = recv_or_never(subscription) => Event::Delivery(delivery),
                    () = self.raw.0.unfinished() => Event::Finish,
                    _ = tokio::time::sleep_until(next_ping) => Event::PingDue,
                    _ = sleep_until_or_never(pong_due), if reading => Event::PongOverdue,
                    lapse = lapsed_or_never(self.expiry.as_ref()) => Event::CredentialsLapsed(lapse),
                }
            };
            if let (false, Feed::Topic { subscribed, .. }) =
                (matches!(event, Event::Delivery(_) | Event::Finish), &self.feed)
            {
                // Whatever this task writes now must not meet a direct write halfway.
                subscribed.subscription.claim();
            }
            let keep_going = match event {
                Event::Finish => matches!(
                    tokio::time::timeout(self.write_timeout, self.raw.flush()).await,
                    Ok(Ok(()))
                ),
                Event::Shutdown => {
                    self.close(CloseCode::Away, "server shutting down").await;
                    false
                }
                Event::Delivery(Delivery::Message { message, skipped }) => {
                    self.send_messages(message, skipped).await.is_ok()
                }
                Event::Delivery(Delivery::Closed(CloseReason::Overflow)) => {
                    self.close(CloseCode::Again, "too slow: reconnect with ?cursor= to resume")
                        .await;
                    false
                }
                Event::Delivery(Delivery::Closed(CloseReason::TopicClosed)) => {
                    self.close(CloseCode::Away, "topic closed").await;
                    false
                }
                Event::Frame(Ok(frame)) => self.on_frame(frame, &mut pong_due).await,
                Event::InboundReply(None) => true,
                Event::InboundReply(Some(body)) => match std::str::from_utf8(&body) {
                    Ok(_) => self.send(Frame::text(body)).await,
                    Err(_) => self.send(Frame::binary(body)).await,
                },
                Event::Frame(Err(WebSocketError::ConnectionClosed)) => false,
                Event::Frame(Err(error)) => {
                    tracing::debug!("WebSocket client error: {error}");
                    self.fail(&error).await;
                    false
                }
                Event::PingDue => {
                    next_ping = Instant::now() + self.spec.ping_interval;
                    pong_due.get_or_insert(Instant::now() + self.spec.pong_timeout);
                    self.send(Frame::ping("sidestream")).await
                }
                Event::CredentialsLapsed(lapse) => {
                    if let Some(expiry) = &self.expiry {
                        expiry.record(&lapse);
                    }
                    if let Feed::Topic { subscribed, .. } = &self.feed {
                        tracing::debug!(topic = %subscribed.subscription.topic().key(), "credentials lapsed; closing");
                    }
                    let reason = match &lapse {
                        Lapse::Expired => "credentials expired".to_string(),
                        Lapse::Revoked(reason) => format!("access revoked: {reason}"),
                    };
                    self.close(CloseCode::Policy, &reason).await;
                    false
                }
                Event::PongOverdue => {
                    tracing::debug!("WebSocket client did not answer a ping; closing");
                    let frame = close_frame(CloseCode::Away, "no pong");
                    let _ = tokio::time::timeout(Duration::from_millis(100), self.ws.send(frame)).await;
                    false
                }
            };
            if !keep_going {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), self.raw.shutdown()).await;
    }

    /// From here on the publishing task may write messages straight to the socket while
    /// this task waits; not for a delta client (its frames depend on what it holds) nor
    /// for one whose credentials lapse (nothing may reach it after the lapse).
    fn go_direct(&self) {
        let Feed::Topic {
            subscribed,
            deltas: None,
            ..
        } = &self.feed
        else {
            return;
        };
        let (None, Some(deliveries)) = (&self.expiry, &self.counters.deliveries) else {
            return;
        };
        let subscription = &subscribed.subscription;
        subscription.set_direct_sink(Arc::new(super::direct_sink::WebSocketSink {
            writer: crate::downstream::direct::DirectWriter {
                socket: self.raw.0.clone(),
                topic: subscription.topic().clone(),
                deliveries: deliveries.clone(),
                bytes_written: self.counters.bytes_written.clone(),
            },
            envelope: self.spec.envelope,
            deflate: self.deflate,
            deflate_min_bytes: self.spec.deflate_min_bytes,
        }));
    }

    /// What the subscription starts with: a reset notice (JSON envelope only: raw payloads
    /// have nowhere to say it), then the backlog.
    async fn send_backlog(&mut self) -> std::io::Result<()> {
        let Feed::Topic { subscribed, .. } = &mut self.feed else {
            return Ok(());
        };
        let backlog = std::mem::take(&mut subscribed.backlog);
        backlog
            .first()
            .inspect(|m| crate::metrics::delivered(subscribed.subscription.topic(), m, backlog.len() as u64));
        if let (Some(position), Envelope::Json) = (subscribed.reset, self.spec.envelope) {
            let notice = format!("{{\"reset\":true,\"cursor\":\"{position}\"}}");
            if !self.send(Frame::text(notice)).await {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        let kind = self.frame_kind();
        let mut frames = Vec::with_capacity(backlog.len());
        for message in &backlog {
            frames.push(kind.frame_of(message).await);
        }
        self.write_frames(&frames).await
    }

    fn frame_kind(&self) -> FrameKind<'_> {
        let deltas = match &self.feed {
            Feed::Topic {
                deltas: Some(deltas), ..
            } => Some(deltas),
            _ => None,
        };
        FrameKind {
            envelope: self.spec.envelope,
            deflate: self.deflate,
            deflate_min_bytes: self.spec.deflate_min_bytes,
            deltas,
        }
    }

    /// Writes `first` and whatever else is already queued, in one flush; a gap the
    /// `drop_oldest` policy left before a message is announced first (see [`Self::gap_notice`]).
    async fn send_messages(&mut self, first: Arc<Message>, skipped: u64) -> std::io::Result<()> {
        let mut batch = vec![(first, skipped)];
        if let Feed::Topic { subscribed, .. } = &self.feed {
            while batch.len() < MAX_BATCH {
                match subscribed.subscription.try_recv() {
                    Some(Delivery::Message { message, skipped }) => batch.push((message, skipped)),
                    _ => break,
                }
            }
        }
        if let Feed::Topic { subscribed, .. } = &self.feed {
            crate::metrics::delivered(subscribed.subscription.topic(), &batch[0].0, batch.len() as u64);
        }
        let kind = self.frame_kind();
        let mut frames = Vec::with_capacity(batch.len());
        for (message, skipped) in &batch {
            if let Some(notice) = self.gap_notice(message, *skipped) {
                frames.push(notice);
            }
            frames.push(kind.frame_of(message).await);
        }
        self.write_frames(&frames).await
    }

    /// On an event topic with the JSON envelope, messages dropped for this client are
    /// announced as SSE announces them: `{"reset":true,"cursor":<position before message>,
    /// "skipped":n}`. Raw payloads have nowhere to say it; there the gap goes unsaid (and
    /// is counted in the drop metric), which is documented.
    fn gap_notice(&self, message: &Message, skipped: u64) -> Option<Bytes> {
        let Feed::Topic { subscribed, .. } = &self.feed else {
            return None;
        };
        let events = subscribed.subscription.topic().settings().mode == Mode::Events;
        if skipped == 0 || !events || self.spec.envelope != Envelope::Json {
            return None;
        }
        let position = Cursor {
            seq: message.cursor.seq.saturating_sub(1),
            ..message.cursor
        };
        let notice = format!("{{\"reset\":true,\"cursor\":\"{position}\",\"skipped\":{skipped}}}");
        Some(encode_frame(notice.as_bytes(), true, false))
    }

    /// Writes pre-encoded frames straight to the socket, after yawc's own buffer is empty
    /// so that no frame of its own can be cut in two.
    async fn write_frames(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let write = async {
            flush_all(&mut self.ws).await.map_err(std::io::Error::other)?;
            for frame in frames {
                self.raw.write_all(frame).await?;
            }
            self.raw.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => {
                if let Some(deliveries) = &self.counters.deliveries {
                    deliveries.inc_by(frames.len() as u64);
                }
                let bytes: usize = frames.iter().map(Bytes::len).sum();
                if let Feed::Topic { subscribed, .. } = &self.feed {
                    subscribed.subscription.topic().stats().wrote(bytes);
                }
                self.counters.bytes_written.inc_by(bytes as u64);
                result
            }
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Fails the connection after a protocol error with the close code RFC 6455 asks for.
    /// yawc queues that close frame itself for errors found while decoding a frame; for
    /// errors found while assembling a message (bad UTF-8, fragments, size) it does not, so
    /// it is sent here unless the socket has already carried one.
    async fn fail(&mut self, error: &WebSocketError) {
        if matches!(error, WebSocketError::FrameTooLarge) {
            METRICS
                .limit_hits
                .with_label_values(&["websocket_message_bytes"])
                .inc();
        }
        if let WebSocketError::InvalidOpCode(opcode) = error {
            // yawc has queued 1003 (unsupported data) but not written it. A reserved opcode
            // is a protocol error (RFC 6455 §5.2 fails the connection, 1002 per §7.4.1), so
            // that close is left unsent and ours goes out instead. yawc's write buffer is
            // empty here: every frame it was given has been flushed before the next read.
            if !self.close_sent.load(Ordering::SeqCst) {
                let reason = format!("reserved opcode {opcode:#x}");
                let close = super::io::close_frame_bytes(CloseCode::Protocol.into(), close_reason(&reason));
                let write = async {
                    self.raw.write_all(&close).await?;
                    self.raw.flush().await
                };
                let _ = tokio::time::timeout(self.write_timeout, write).await;
            }
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, flush_all(&mut self.ws)).await;
        if self.close_sent.load(Ordering::SeqCst) {
            return;
        }
        let code = match error {
            WebSocketError::InvalidUTF8 => CloseCode::Invalid,
            WebSocketError::FrameTooLarge => CloseCode::Size,
            WebSocketError::InvalidFragment
            | WebSocketError::FragmentTimeout
            | WebSocketError::InvalidContinuationFrame => CloseCode::Protocol,
            _ => return,
        };
        let _ = self.send(close_frame(code, &error.to_string())).await;
    }

    /// Sends one frame through yawc (control frames, replies, echoes). `false` = gone.
    async fn send(&mut self, frame: Frame) -> bool {
        matches!(
            tokio::time::timeout(self.write_timeout, self.ws.send(frame)).await,
            Ok(Ok(()))
        )
    }

    /// Starts the close handshake and waits briefly for the client's answer.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        if !self.send(close_frame(code, reason)).await {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(frame) = self.ws.next_frame().await {
                if frame.opcode() == OpCode::Close {
                    break;
                }
            }
        })
        .await;
    }

    /// A frame from the client. Returns whether to keep the connection.
    async fn on_frame(&mut self, frame: Frame, pong_due: &mut Option<Instant>) -> bool {
        match frame.opcode() {
            OpCode::Text | OpCode::Binary => self.on_message(frame).await,
            OpCode::Pong => {
                *pong_due = None;
                true
            }
            // yawc has queued the pong; send it now rather than with the next write.
            OpCode::Ping => matches!(
                tokio::time::timeout(self.write_timeout, flush_all(&mut self.ws)).await,
                Ok(Ok(()))
            ),
            // yawc has queued the answering close frame.
            OpCode::Close => {
                let _ = tokio::time::timeout(CLOSE_WAIT, flush_all(&mut self.ws)).await;
                false
            }
            OpCode::Continuation => true,
        }
    }

    async fn on_message(&mut self, frame: Frame) -> bool {
        let text = frame.opcode() == OpCode::Text;
        if matches!(self.feed, Feed::Topic { .. }) && !self.inbound_rate.take() {
            METRICS
                .limit_hits
                .with_label_values(&["websocket_inbound_rate"])
                .inc();
            let reason = format!(
                "more than {} messages per second",
                self.spec.inbound_messages_per_second
            );
            self.close(CloseCode::Policy, &reason).await;
            return false;
        }
        let payload = frame.into_payload();
        let reply = match &self.feed {
            Feed::Echo if text => Frame::text(payload),
            Feed::Echo => Frame::binary(payload),
            Feed::Topic { inbound: None, .. } => {
                self.close(CloseCode::Policy, "this topic does not accept client messages")
                    .await;
                return false;
            }
            Feed::Topic {
                inbound: Some(inbound),
                ..
            } => {
                // Answered from the loop when it comes back, so a slow backend stalls
                // neither deliveries nor pings.
                let forwarding = forward(Arc::clone(inbound), payload, text);
                self.inbound_replies.push_back(Box::pin(forwarding));
                return true;
            }
        };
        self.send(reply).await
    }
}

/// What a hub message's frame for this client depends on, copied out of the connection:
/// building a frame may wait (for a large deflate off the runtime) and must then hold no
/// borrow of the connection, whose task has to stay `Send`.
#[derive(Clone, Copy)]
struct FrameKind<'a> {
    envelope: Envelope,
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
    /// A `?delta=json-patch` client: its position in the topic's patches.
    deltas: Option<&'a crate::hub::DeltaCursor>,
}

impl FrameKind<'_> {
    async fn frame_of(&self, message: &Message) -> Bytes {
        if let Some(deltas) = self.deltas {
            if let Some(frame) =
                super::super::delta::websocket_frame(deltas, message, self.deflate, self.deflate_min_bytes)
                    .await
            {
                return frame;
            }
        }
        message_frame(message, self.envelope, self.deflate, self.deflate_min_bytes).await
    }
}

/// Writes out everything yawc has to send: frames it owes the peer (pongs, close replies,
/// which it queues while reading) and its write buffer. Only then may raw frames follow.
async fn flush_all(ws: &mut WebSocket<SharedStream>) -> Result<(), WebSocketError> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_ready(cx)).await?;
    ws.flush().await
}

/// The next delivery, or never for a connection without a subscription (echo).
async fn recv_or_never(subscription: Option<&Subscription>) -> Delivery {
    match subscription {
        Some(subscription) => subscription.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
