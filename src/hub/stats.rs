//! What one topic instance has done, for the admin API: deliveries and bytes written by the
//! transports, subscribers per transport, and what its upstream task last saw. Plain
//! counters and one small lock; the admin listener reads them, turns totals into rates and
//! decides what "ok", "stale" or "backing off" means.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The transports that hold a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    LongPoll,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Sse, Transport::WebSocket, Transport::LongPoll];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "long_poll",
        }
    }

    /// The transport of a metrics label (`sse`, `websocket`, `long_poll`).
    pub fn from_name(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the upstream task of the instance last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamReport {
    /// Requests sent to the backend (polls, stream connections), refused ones included.
    pub requests: u64,
    /// The last HTTP status the backend answered; `None` before any, or when the last
    /// request got no answer (timeout, connection refused, circuit open).
    pub last_status: Option<u16>,
    /// How long the last request took.
    pub last_latency: Option<Duration>,
    /// Set while the task waits after a failure: when it tries again.
    pub next_retry_at: Option<Instant>,
    /// The last request was refused by the open circuit breaker.
    pub circuit_open: bool,
    /// The configured poll interval (poll sources only).
    pub interval: Option<Duration>,
    /// The time between the last two poll starts: the interval as it really is, stretched by
    /// the backend budget, `Retry-After`/`max-age`, backoff or polling on demand.
    pub effective_interval: Option<Duration>,
    last_poll_start: Option<Instant>,
}

/// Counters of one topic instance; every method is cheap and never waits long.
#[derive(Default)]
pub struct TopicStats {
    deliveries: AtomicU64,
    bytes_out: AtomicU64,
    subscribers: [Arc<AtomicU64>; 3],
    upstream: Mutex<UpstreamReport>,
    /// Whatever the recorder of deliveries caches per instance (the metrics module keeps its
    /// freshness histogram for the topic name here), so that the hot path does not look it
    /// up by label on every write. Opaque: the hub knows nothing of metrics.
    recorder: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

/// Counts one subscriber of a transport while it lives.
#[derive(Debug)]
pub struct SubscriberCount(Arc<AtomicU64>);

impl Drop for SubscriberCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for TopicStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicStats")
            .field("deliveries", &self.deliveries)
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl TopicStats {
    /// The recorder's cached handle, made by `make` on first use.
    pub fn recorder<T: Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.recorder.get_or_init(|| Box::new(make())).downcast_ref()
    }

    /// `count` messages are being written to one client.
    pub fn delivered(&self, count: u64) {
        self.deliveries.fetch_add(count, Ordering::Relaxed);
    }

    /// `bytes` were written to one client's socket (messages, keepalives, framing).
    pub fn wrote(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Counts a subscriber of `transport` until the returned guard is dropped.
    pub fn subscriber(&self, transport: Transport) -> SubscriberCount {
        let counter = self.subscribers[transport.index()].clone();
        counter.fetch_add(1, Ordering::Relaxed);
        SubscriberCount(counter)
    }

    pub fn subscribers(&self, transport: Transport) -> u64 {
        self.subscribers[transport.index()].load(Ordering::Relaxed)
    }

    fn upstream_lock(&self) -> MutexGuard<'_, UpstreamReport> {
        self.upstream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A poll starts now; `interval` is the configured one.
    pub fn poll_started(&self, interval: Duration) {
        let now = Instant::now();
        let mut report = self.upstream_lock();
        report.interval = Some(interval);
        if let Some(previous) = report.last_poll_start {
            report.effective_interval = Some(now.saturating_duration_since(previous));
        }
        report.last_poll_start = Some(now);
    }

    /// A request ended: with the backend's `status` when it answered at all.
    pub fn upstream_answered(&self, status: Option<u16>, latency: Duration, circuit_open: bool) {
        let mut report = self.upstream_lock();
        report.requests += 1;
        report.last_status = status;
        report.last_latency = Some(latency);
        report.circuit_open = circuit_open;
        report.next_retry_at = None;
    }

    /// The task failed and waits `delay` before it tries again.
    pub fn backing_off(&self, delay: Duration) {
        self.upstream_lock().next_retry_at = Some(Instant::now() + delay);
    }

    /// The task is healthy again (no retry pending).
    pub fn recovered(&self) {
        self.upstream_lock().next_retry_at = None;
    }

    pub fn upstream(&self) -> UpstreamReport {
        self.upstream_lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_deliveries_bytes_and_subscribers_per_transport() {
        let stats = TopicStats::default();
        stats.delivered(1);
        stats.delivered(3);
        stats.wrote(100);
        stats.wrote(28);
        assert_eq!(stats.deliveries(), 4);
        assert_eq!(stats.bytes_out(), 128);
        let sse = stats.subscriber(Transport::Sse);
        let sse_two = stats.subscriber(Transport::Sse);
        let ws = stats.subscriber(Transport::WebSocket);
        assert_eq!(stats.subscribers(Transport::Sse), 2);
        assert_eq!(stats.subscribers(Transport::WebSocket), 1);
        assert_eq!(stats.subscribers(Transport::LongPoll), 0);
        drop(sse);
        drop(ws);
        assert_eq!(stats.subscribers(Transport::Sse), 1);
        assert_eq!(stats.subscribers(Transport::WebSocket), 0);
        drop(sse_two);
        assert_eq!(stats.subscribers(Transport::Sse), 0);
    }

    #[test]
    fn the_recorder_handle_is_made_once() {
        let stats = TopicStats::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..3 {
            let handle = stats.recorder(|| {
                made.fetch_add(1, Ordering::Relaxed);
                7u32
            });
            assert_eq!(handle, Some(&7));
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn transport_names_round_trip() {
        for transport in Transport::ALL {
            assert_eq!(Transport::from_name(transport.name()), Some(transport));
        }
        assert_eq!(Transport::from_name("carrier pigeon"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn effective_interval_is_the_time_between_poll_starts() {
        let stats = TopicStats::default();
        stats.poll_started(Duration::from_secs(1));
        assert_eq!(stats.upstream().effective_interval, None);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stats.poll_started(Duration::from_secs(1));
        let report = stats.upstream();
        assert_eq!(report.interval, Some(Duration::from_secs(1)));
        assert_eq!(report.effective_interval, Some(Duration::from_millis(2500)));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_set_a_retry_time_that_an_answer_clears() {
        let stats = TopicStats::default();
        stats.upstream_answered(Some(503), Duration::from_millis(20), false);
        stats.backing_off(Duration::from_secs(4));
        let report = stats.upstream();
        assert_eq!(report.requests, 1);
        assert_eq!(report.last_status, Some(503));
        assert_eq!(report.last_latency, Some(Duration::from_millis(20)));
        assert_eq!(
            report.next_retry_at,
            Some(Instant::now() + Duration::from_secs(4))
        );
        stats.upstream_answered(None, Duration::ZERO, true);
        let report = stats.upstream();
        assert!(report.circuit_open);
        assert_eq!(report.last_status, None);
        assert_eq!(report.next_retry_at, None);
        stats.upstream_answered(Some(200), Duration::from_millis(5), false);
        stats.recovered();
        let report = stats.upstream();
        assert_eq!(report.requests, 3);
        assert!(!report.circuit_open);
        assert_eq!(report.next_retry_at, None);
    }
}
