//! The per-subscriber bounded queue between a topic and one client, and its overflow policy.
//!
//! Publishing never waits for a client: it pushes into each queue and moves on. When a queue
//! is full the topic's policy decides what gives, so one slow client can neither delay the
//! others nor grow memory without bound.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::Notify;

use super::message::Message;

/// What happens when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Keep only the newest message: the client skips to the latest state.
    Conflate,
    /// Discard the oldest queued messages: the client sees a jump in the cursor.
    DropOldest,
    /// Close the client, which reconnects with its cursor and replays from history.
    Disconnect,
}

impl OverflowPolicy {
    /// The config spelling, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            OverflowPolicy::Conflate => "conflate",
            OverflowPolicy::DropOldest => "drop_oldest",
            OverflowPolicy::Disconnect => "disconnect",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Why a subscription ended from the hub's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed under the `disconnect` policy.
    Overflow,
    /// The topic instance was removed (reaped or shut down).
    TopicClosed,
}

/// One delivery to a subscriber.
#[derive(Debug)]
pub enum Delivery {
    /// The next message; `skipped` counts messages the policy dropped just before it.
    Message {
        message: Arc<Message>,
        skipped: u64,
    },
    Closed(CloseReason),
}

/// Counts of what the overflow policy did to one queue, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverflowCounts {
    pub dropped: u64,
    pub disconnected: bool,
    /// A sink that takes one message took it: the subscription is over (see
    /// [`DirectSink::takes_one`]).
    pub ended: bool,
}

/// A way to hand a message straight to a client whose connection has nothing in flight,
/// from the publishing task, without waking the connection's own task: what a fan-out
/// costs is then one socket write per client. Implemented by the transports; the hub
/// only decides when an offer is allowed (see [`SubscriberQueue::push`]).
pub trait DirectSink: Send + Sync {
    /// Delivers `message` now if it can without waiting (`true`); the sink then owns
    /// finishing the write. `false`: nothing was written, and the message is queued.
    fn offer(&self, message: &Arc<Message>) -> bool;

    /// Whether the subscription ends with the first message this sink takes (a long
    /// poll's answer): the queue then takes nothing more, and the topic drops the
    /// subscriber at once, without waiting for its consumer to run.
    fn takes_one(&self) -> bool {
        false
    }

    /// The fan-out will offer this sink a message soon: ask for the memory the offer
    /// reads beyond the sink itself (its socket's state) to be loaded meanwhile (see
    /// [`super::prefetch`]).
    fn prefetch(&self) {}
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Message>>,
    bytes: usize,
    skipped: u64,
    closed: Option<CloseReason>,
    counts: OverflowCounts,
    /// The consumer waits in [`SubscriberQueue::recv`] with nothing taken and nothing of its
    /// own being written: only then may a message bypass the queue, so that it can never
    /// overtake one the consumer holds or cut into a write of the consumer's.
    parked: bool,
    /// Its one-message sink took its message: nothing more is queued or offered.
    ended: bool,
}

impl fmt::Debug for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueState")
            .field("items", &self.items.len())
            .field("bytes", &self.bytes)
            .field("skipped", &self.skipped)
            .field("closed", &self.closed)
            .field("parked", &self.parked)
            .finish()
    }
}

pub struct SubscriberQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    limits: QueueLimits,
    policy: OverflowPolicy,
    /// Set once, before the consumer first parks; outside the lock so that the fan-out can
    /// ask for it ahead of its push ([`Self::prefetch_sink`]).
    sink: OnceLock<Arc<dyn DirectSink>>,
}

impl fmt::Debug for SubscriberQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberQueue")
            .field("state", &self.state)
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .field("direct", &self.sink.get().is_some())
            .finish()
    }
}

impl SubscriberQueue {
    pub fn new(limits: QueueLimits, policy: OverflowPolicy) -> Self {
        SubscriberQueue {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            limits,
            policy,
            sink: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the client, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets [`Self::push`] hand messages to `sink` while the consumer is parked; once per
    /// subscription (a later one is ignored).
    pub fn set_sink(&self, sink: Arc<dyn DirectSink>) {
        let _ = self.sink.set(sink);
    }

    /// See [`super::prefetch`]: the fan-out reaches this queue in a few steps. `step` 0
    /// asks for the sink (its pointer is in this queue, loaded by an earlier step), 1 for
    /// what the sink's offer reads.
    pub fn prefetch_sink(&self, step: u8) {
        if let Some(sink) = self.sink.get() {
            match step {
                0 => super::prefetch::prefetch(Arc::as_ptr(sink)),
                _ => sink.prefetch(),
            }
        }
    }

    /// The consumer is about to write something of its own (a keepalive, a ping, its
    /// goodbye): no direct delivery until it waits in [`Self::recv`] again. Any offer in
    /// progress finishes first (it holds the lock).
    pub fn claim(&self) {
        self.lock().parked = false;
    }

    /// Queues a message, applying the overflow policy, or (when `direct` allows it) hands
    /// it to the direct sink if the consumer is parked on an empty queue. Returns what the
    /// policy dropped.
    pub fn push(&self, message: Arc<Message>, direct: bool) -> OverflowCounts {
        let mut state = self.lock();
        if state.closed.is_some() || state.ended {
            return OverflowCounts::default();
        }
        if direct && state.parked && state.items.is_empty() && state.skipped == 0 {
            if let Some(sink) = self.sink.get() {
                if sink.offer(&message) {
                    state.ended = sink.takes_one();
                    return OverflowCounts {
                        ended: state.ended,
                        ..OverflowCounts::default()
                    };
                }
            }
        }
        let before = state.counts;
        let weight = message.payload_bytes();
        let full = |state: &QueueState| {
            state.items.len() + 1 > self.limits.max_messages
                || (!state.items.is_empty() && state.bytes + weight > self.limits.max_bytes)
        };
        if full(&state) {
            match self.policy {
                OverflowPolicy::Conflate => {
                    let dropped = state.items.len() as u64;
                    state.items.clear();
                    state.bytes = 0;
                    state.skipped += dropped;
                    state.counts.dropped += dropped;
                }
                OverflowPolicy::DropOldest => {
                    while full(&state) {
                        let Some(oldest) = state.items.pop_front() else {
                            break;
                        };
                        state.bytes -= oldest.payload_bytes();
                        state.skipped += 1;
                        state.counts.dropped += 1;
                    }
                }
                OverflowPolicy::Disconnect => {
                    state.items.clear();
                    state.bytes = 0;
                    state.closed = Some(CloseReason::Overflow);
                    state.counts.disconnected = true;
                    drop(state);
                    self.ready.notify_one();
                    return OverflowCounts {
                        dropped: 0,
                        disconnected: true,
                        ended: false,
                    };
                }
            }
        }
        state.bytes += weight;
        state.items.push_back(message);
        let after = state.counts;
        drop(state);
        self.ready.notify_one();
        OverflowCounts {
            dropped: after.dropped - before.dropped,
            disconnected: false,
            ended: false,
        }
    }

    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Takes the next delivery without waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        Self::take(&mut self.lock())
    }

    fn take(state: &mut QueueState) -> Option<Delivery> {
        if let Some(message) = state.items.pop_front() {
            state.parked = false;
            state.bytes -= message.payload_bytes();
            let skipped = std::mem::take(&mut state.skipped);
            return Some(Delivery::Message { message, skipped });
        }
        state.closed.map(Delivery::Closed)
    }

    /// Waits for the next delivery. Cancel-safe: nothing is taken until it returns.
    pub async fn recv(&self) -> Delivery {
        loop {
            {
                let mut state = self.lock();
                if let Some(delivery) = Self::take(&mut state) {
                    return delivery;
                }
                state.parked = true;
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check
            // above and this await is not lost.
            self.ready.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Bytes (by message weight) waiting in this queue.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counts(&self) -> OverflowCounts {
        self.lock().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::cursor::Cursor;
    use crate::hub::message::Payload;
    use bytes::Bytes;

    fn message(seq: u64) -> Arc<Message> {
        let cursor = Cursor::test(seq);
        Arc::new(Message::new(
            cursor,
            Payload {
                data: Bytes::from_static(b"x"),
                ..Payload::default()
            },
        ))
    }

    fn queue(policy: OverflowPolicy) -> SubscriberQueue {
        SubscriberQueue::new(
            QueueLimits {
                max_messages: 3,
                max_bytes: 1 << 20,
            },
            policy,
        )
    }

    fn drain(queue: &SubscriberQueue) -> Vec<(u64, u64)> {
        let mut seen = Vec::new();
        while let Some(Delivery::Message { message, skipped }) = queue.try_recv() {
            seen.push((message.cursor.seq, skipped));
        }
        seen
    }

    #[test]
    fn conflate_keeps_only_the_newest_and_reports_the_skip() {
        let queue = queue(OverflowPolicy::Conflate);
        for seq in 1..=5 {
            queue.push(message(seq), true);
        }
        // 1,2,3 fill it; 4 conflates to [4]; 5 fits.
        assert_eq!(drain(&queue), vec![(4, 3), (5, 0)]);
        assert_eq!(queue.counts().dropped, 3);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_window() {
        let queue = queue(OverflowPolicy::DropOldest);
        for seq in 1..=5 {
            queue.push(message(seq), true);
        }
        assert_eq!(drain(&queue), vec![(3, 2), (4, 0), (5, 0)]);
    }

    #[test]
    fn disconnect_closes_and_discards() {
        let queue = queue(OverflowPolicy::Disconnect);
        for seq in 1..=4 {
            queue.push(message(seq), true);
        }
        assert!(matches!(
            queue.try_recv(),
            Some(Delivery::Closed(CloseReason::Overflow))
        ));
        assert!(queue.counts().disconnected);
        queue.push(message(5), true);
        assert!(queue.is_empty());
    }

    #[test]
    fn byte_limit_counts_too() {
        let queue = SubscriberQueue::new(
            QueueLimits {
                max_messages: 100,
                max_bytes: message(1).payload_bytes() * 2,
            },
            OverflowPolicy::DropOldest,
        );
        for seq in 1..=4 {
            queue.push(message(seq), true);
        }
        assert_eq!(drain(&queue), vec![(3, 2), (4, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn recv_waits_for_a_push() {
        let queue = Arc::new(queue(OverflowPolicy::Conflate));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.recv().await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        queue.push(message(1), true);
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("recv wakes up")
            .expect("task ok");
        assert!(matches!(delivery, Delivery::Message { message, .. } if message.cursor.seq == 1));
    }

    /// A sink that takes messages while `accept` says so and records what it took.
    #[derive(Default)]
    struct RecordingSink {
        accept: std::sync::atomic::AtomicBool,
        taken: Mutex<Vec<u64>>,
    }

    impl DirectSink for RecordingSink {
        fn offer(&self, message: &Arc<Message>) -> bool {
            if !self.accept.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            self.taken.lock().unwrap().push(message.cursor.seq);
            true
        }
    }

    fn with_sink(accept: bool) -> (Arc<SubscriberQueue>, Arc<RecordingSink>) {
        let queue = Arc::new(queue(OverflowPolicy::DropOldest));
        let sink = Arc::new(RecordingSink::default());
        sink.accept.store(accept, std::sync::atomic::Ordering::SeqCst);
        queue.set_sink(sink.clone());
        (queue, sink)
    }

    /// Polls `recv` once, as a consumer's `select!` does before it waits: it parks.
    fn park(queue: &SubscriberQueue) {
        use futures_util::FutureExt;
        assert!(queue.recv().now_or_never().is_none(), "nothing was queued");
    }

    #[test]
    fn a_parked_consumer_gets_messages_through_its_sink_and_is_not_woken() {
        let (queue, sink) = with_sink(true);
        // Not parked yet (the consumer is still writing its backlog): queued.
        queue.push(message(1), true);
        assert_eq!(drain(&queue), vec![(1, 0)]);
        park(&queue);
        queue.push(message(2), true);
        queue.push(message(3), true);
        assert_eq!(*sink.taken.lock().unwrap(), vec![2, 3]);
        assert!(queue.is_empty());
        use futures_util::FutureExt;
        assert!(
            queue.recv().now_or_never().is_none(),
            "no wake-up permit was left behind"
        );
    }

    #[test]
    fn messages_never_overtake_one_the_consumer_holds_or_waits_for() {
        let (queue, sink) = with_sink(true);
        park(&queue);
        // The sink refuses (its socket would block): queued, and the consumer is woken.
        sink.accept.store(false, std::sync::atomic::Ordering::SeqCst);
        queue.push(message(1), true);
        sink.accept.store(true, std::sync::atomic::Ordering::SeqCst);
        // 1 waits in the queue, so 2 must wait behind it.
        queue.push(message(2), true);
        assert!(sink.taken.lock().unwrap().is_empty());
        // The consumer takes 1 and is busy writing it: 3 waits too.
        assert!(
            matches!(queue.try_recv(), Some(Delivery::Message { message, .. }) if message.cursor.seq == 1)
        );
        queue.push(message(3), true);
        assert_eq!(drain(&queue), vec![(2, 0), (3, 0)]);
        assert!(sink.taken.lock().unwrap().is_empty());
        // Parked again on an empty queue: direct.
        park(&queue);
        queue.push(message(4), true);
        assert_eq!(*sink.taken.lock().unwrap(), vec![4]);
    }

    #[test]
    fn a_claim_keeps_messages_in_the_queue_until_the_consumer_parks_again() {
        let (queue, sink) = with_sink(true);
        park(&queue);
        queue.claim();
        queue.push(message(1), true);
        assert!(sink.taken.lock().unwrap().is_empty());
        assert_eq!(drain(&queue), vec![(1, 0)]);
        queue.close(CloseReason::TopicClosed);
        queue.push(message(2), true);
        assert!(
            sink.taken.lock().unwrap().is_empty(),
            "nothing reaches a closed queue's sink"
        );
    }
}
