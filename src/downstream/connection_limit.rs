//! Caps on open client connections, global and per client IP, enforced when a connection is
//! accepted: one over the cap is closed at once, before a byte is read. That is the one
//! refusal an `EventSource` survives (it reconnects after its retry delay), where an HTTP
//! error status would stop it for good.
//!
//! Also the request header deadline: pingora times out each read, not the whole header, so
//! a client dripping one byte at a time (slowloris) would hold its connection forever. Each
//! request's header must be complete within `request_header_timeout_ms` of the connection
//! opening (or of the previous response); the proxy marks the moment through a task-local
//! flag, set in `early_request_filter` on this same task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use super::per_ip::PerIp;
use crate::config::Limits;
use crate::metrics::METRICS;

tokio::task_local! {
    static HEADER_COMPLETE: Arc<AtomicBool>;
}

/// Called by the proxy once a request header has been read in full.
pub fn mark_header_complete() {
    let _ = HEADER_COMPLETE.try_with(|complete| complete.store(true, Ordering::Relaxed));
}

/// Wraps the HTTP application and runs its keep-alive loop itself, so one connection is
/// counted once however many requests it carries.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    limits: Limits,
    open: AtomicUsize,
    per_ip: Arc<PerIp>,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, limits: Limits) -> Self {
        ConnectionLimit {
            inner: Arc::new(inner),
            limits,
            open: AtomicUsize::new(0),
            per_ip: Arc::new(PerIp::default()),
        }
    }
}

struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let was_open = self.open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(&self.open);
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
        let _slot = match ip {
            Some(ip) => match self.per_ip.acquire(ip, self.limits.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    METRICS
                        .limit_hits
                        .with_label_values(&["connections_per_ip"])
                        .inc();
                    return None;
                }
            },
            None => None,
        };
        let mut next = Some(stream);
        while let Some(stream) = next.take() {
            let complete = Arc::new(AtomicBool::new(false));
            let request =
                HEADER_COMPLETE.scope(Arc::clone(&complete), self.inner.process_new(stream, shutdown));
            let deadline = async {
                tokio::time::sleep(self.limits.request_header_timeout).await;
                if complete.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                reused = request => next = reused,
                () = deadline => {
                    METRICS.limit_hits.with_label_values(&["request_header_timeout"]).inc();
                    return None;
                }
            }
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
