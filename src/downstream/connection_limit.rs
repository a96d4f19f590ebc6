//! Caps on open client connections, global and per client IP, enforced when a connection is
//! accepted: one over the cap is closed at once, before a byte is read. That is the one
//! refusal an `EventSource` survives (it reconnects after its retry delay), where an HTTP
//! error status would stop it for good.
//!
//! Also the request header deadline: pingora times out each read, not the whole header, so
//! a client dripping one byte at a time (slowloris) would hold its connection forever. Each
//! request's header must be complete within `request_header_timeout_ms` of the connection
//! opening (or of the previous response); the proxy marks the moment through a task-local
//! flag, set in `early_request_filter` on this same task. The same flag ends the header's
//! byte budget (see `header_budget`): until it is set, the connection's reads are capped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use pingora_core::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use super::header_budget::{HeaderBudget, HeaderLimited};
use super::next_poll::PollLane;
use super::per_ip::{IpSlot, PerIp};
use super::request_head::{read_head, Head};
use super::sse_lane::sse_request;
use crate::config::Limits;
use crate::metrics::METRICS;

/// pingora's keep-alive timeout for a connection's first session (its default), carried to
/// the next ones in their persistent settings.
const KEEPALIVE_TIMEOUT_S: u64 = 60;

tokio::task_local! {
    static CONNECTION: Arc<ConnectionTicket>;
    static KEEP_ALIVE: KeepAlive;
}

/// Hands a connection back to the HTTP/1.1 keep-alive loop after a request was answered off
/// pingora's request path (a held long poll: it waits on a small task of its own, not in a
/// pingora request, and gives the connection back once its answer is written).
#[derive(Clone)]
pub struct KeepAlive(Arc<ResumeFn>);

/// Serves a given-back stream's next requests: the stream, its connection's ticket, and the
/// start of the next request if it was already read.
type ResumeFn = dyn Fn(ReusedHttpStream, Arc<ConnectionTicket>, Option<BytesMut>) + Send + Sync;

impl KeepAlive {
    /// The current connection's (on the task serving its request).
    pub fn current() -> Option<KeepAlive> {
        KEEP_ALIVE.try_with(Clone::clone).ok()
    }

    /// Serves the connection's next requests on a task of their own, still under `ticket`;
    /// `read`: the start of the next request, already read from the stream.
    pub fn resume(&self, stream: ReusedHttpStream, ticket: Arc<ConnectionTicket>, read: Option<BytesMut>) {
        (self.0)(stream, ticket, read)
    }
}

/// One accepted connection's place under the caps, released when the last holder drops it:
/// the keep-alive loop below, and a stream that outlives its request (a detached SSE writer).
pub struct ConnectionTicket {
    open: Arc<AtomicUsize>,
    _ip_slot: Option<IpSlot>,
    /// The current request's header: read in full yet, and its byte budget.
    header: Arc<HeaderBudget>,
    /// Passed the caps (and so counted in the open-connections gauge).
    admitted: bool,
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if self.admitted {
            METRICS.client_connections.dec();
        }
    }
}

impl ConnectionTicket {
    /// The connection's next request starts (read off pingora's request path): its header
    /// gets a fresh byte budget.
    pub fn start_request(&self) {
        self.header.start_request();
    }

    /// The same, when the request's first `already_read` bytes were read before it started.
    pub fn start_request_after(&self, already_read: usize) {
        self.header.start_request_after(already_read);
    }

    /// That request's header has been read in full.
    pub fn mark_header_complete(&self) {
        self.header.mark_complete();
    }

    /// Bytes read from the socket for the current request's header so far (pingora may have
    /// read past the header's end: a pipelined next request).
    pub fn header_bytes_read(&self) -> usize {
        self.header.bytes_read()
    }
}

/// Called by the proxy once a request header has been read in full.
pub fn mark_header_complete() {
    let _ = CONNECTION.try_with(|ticket| ticket.header.mark_complete());
}

/// The current connection's ticket, for a task that keeps serving the connection after its
/// request has returned to pingora, so that it stays counted.
pub fn hold_connection() -> Option<Arc<ConnectionTicket>> {
    CONNECTION.try_with(Arc::clone).ok()
}

/// Wraps the HTTP application and runs its keep-alive loop itself, so one connection is
/// counted once however many requests it carries.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    limits: Limits,
    /// Each connection's write buffer (see [`super::write_buffer`]).
    write_buffer_bytes: usize,
    open: Arc<AtomicUsize>,
    per_ip: Arc<PerIp>,
    /// Opens an SSE stream from the head read here, without a pingora session (`sse_lane`).
    lane: Option<Arc<PollLane>>,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, limits: Limits, write_buffer_bytes: usize) -> Self {
        ConnectionLimit {
            inner: Arc::new(inner),
            limits,
            write_buffer_bytes,
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(PerIp::default()),
            lane: None,
        }
    }

    /// New SSE streams whose request `lane` can serve are opened by it.
    pub fn with_sse_lane(mut self, lane: Arc<PollLane>) -> Self {
        self.lane = Some(lane);
        self
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionLimit<A> {
    /// Runs one request (and, inside pingora, the ones it keeps alive for) under the
    /// connection's ticket, within the header deadline. `None` when the deadline struck.
    async fn within_header_deadline<T>(
        &self,
        ticket: &Arc<ConnectionTicket>,
        keep_alive: &KeepAlive,
        request: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        ticket.header.start_request();
        let request = KEEP_ALIVE.scope(keep_alive.clone(), CONNECTION.scope(Arc::clone(ticket), request));
        let deadline = async {
            tokio::time::sleep(self.limits.request_header_timeout).await;
            if ticket.header.is_complete() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            done = request => Some(done),
            () = deadline => {
                METRICS.limit_hits.with_label_values(&["request_header_timeout"]).inc();
                None
            }
        }
    }

    /// What a detached answer calls to go on with the connection: a task running pingora's
    /// own HTTP/1.1 keep-alive loop from the reused stream.
    fn keep_alive(self: &Arc<Self>, shutdown: &ShutdownWatch) -> KeepAlive {
        let app = Arc::clone(self);
        let shutdown = shutdown.clone();
        KeepAlive(Arc::new(move |stream, ticket, read| {
            let app = Arc::clone(&app);
            let shutdown = shutdown.clone();
            tokio::spawn(async move { app.serve_reused(stream, &shutdown, ticket, read).await });
        }))
    }

    /// pingora's HTTP/1.1 keep-alive loop (as in its `ServerApp` for HTTP apps), for a new
    /// connection (`settings`: `None`) or from a stream a detached answer gave back. Each
    /// request head is read here first, into a small buffer (`request_head`), and handed to
    /// the session as its pipelined prefix, so a connection waiting for its next request
    /// holds ~1 KiB, not a pingora session (~23 KiB). `read`: that start of the next request,
    /// already read by whoever gave the stream back. (pingora itself carries no prefix in
    /// the settings: HTTP/1.1 pipelining stays off, so it closes a connection it overread.)
    /// Boxed: it is spawned from `keep_alive`, which it calls itself.
    fn serve_reused<'a>(
        self: Arc<Self>,
        reused: ReusedHttpStream,
        shutdown: &'a ShutdownWatch,
        ticket: Arc<ConnectionTicket>,
        mut read: Option<BytesMut>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let keep_alive = self.keep_alive(shutdown);
            let mut next = Some(reused);
            while let Some(reused) = next.take() {
                let (mut stream, settings) = reused.consume();
                let already_read = read.take();
                let request = async {
                    let read = match already_read {
                        Some(read) => read,
                        None => {
                            let lane = self.lane.as_deref();
                            let head = read_head(
                                &mut stream,
                                BytesMut::new(),
                                |_| None,
                                |parsed, _| lane.and_then(|_| sse_request(parsed)),
                            );
                            match head.await {
                                // Nothing pipelined behind it: the whole read is this request.
                                Head::Complete(read, length, Some(request)) if length == read.len() => {
                                    if let Some(lane) = lane {
                                        let keep_alive = !*shutdown.borrow();
                                        match lane.open_sse(stream, &request, keep_alive).await {
                                            Ok(()) => return None,
                                            Err(back) => stream = back,
                                        }
                                    }
                                    read
                                }
                                Head::Complete(read, _, _) | Head::Unparsed(read) => read,
                                Head::Close => return None,
                            }
                        }
                    };
                    let mut session = ServerSession::new_http1(stream);
                    match settings {
                        Some(settings) => settings.apply_to_session(&mut session),
                        None => {
                            // As pingora's own HTTP/1.1 loop sets up a connection's first session.
                            session.set_keepalive(Some(KEEPALIVE_TIMEOUT_S));
                            session.set_keepalive_reuses_remaining(
                                self.inner
                                    .server_options()
                                    .and_then(|options| options.keepalive_request_limit),
                            );
                        }
                    }
                    if *shutdown.borrow() {
                        // Stop the client from reusing a connection of a server going away.
                        session.set_keepalive(None);
                    }
                    if !read.is_empty() {
                        session.set_pipelined_prefix(read);
                    }
                    self.inner.process_new_http(session, shutdown).await
                };
                match self.within_header_deadline(&ticket, &keep_alive, request).await {
                    Some(Some(reused)) => next = Some(reused),
                    _ => return,
                }
            }
        })
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let was_open = self.open.fetch_add(1, Ordering::Relaxed);
        let mut ticket = ConnectionTicket {
            open: Arc::clone(&self.open),
            _ip_slot: None,
            header: HeaderBudget::new(self.limits.max_request_header_bytes),
            admitted: false,
        };
        if was_open >= self.limits.max_connections {
            METRICS.limit_hits.with_label_values(&["connections"]).inc();
            return None;
        }
        let ip = stream.get_socket_digest().and_then(|digest| {
            digest
                .peer_addr()
                .and_then(|addr| addr.as_inet())
                .map(|addr| addr.ip())
        });
        if let Some(ip) = ip {
            match self.per_ip.acquire(ip, self.limits.max_connections_per_ip) {
                Some(slot) => ticket._ip_slot = Some(slot),
                None => {
                    METRICS
                        .limit_hits
                        .with_label_values(&["connections_per_ip"])
                        .inc();
                    return None;
                }
            }
        }
        ticket.admitted = true;
        METRICS.client_connections.inc();
        let ticket = Arc::new(ticket);
        let stream = HeaderLimited::wrap(stream, Arc::clone(&ticket.header), self.write_buffer_bytes);
        Arc::clone(self)
            .serve_reused(ReusedHttpStream::new(stream, None), shutdown, ticket, None)
            .await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
