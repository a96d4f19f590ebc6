//! The per-subscriber bounded queue between a topic and one client, and its overflow policy.
//!
//! Publishing never waits for a client: it pushes into each queue and moves on. When a queue
//! is full the topic's policy decides what gives, so one slow client can neither delay the
//! others nor grow memory without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Arc<Message>>,
    bytes: usize,
    skipped: u64,
    closed: Option<CloseReason>,
    counts: OverflowCounts,
}

#[derive(Debug)]
pub struct SubscriberQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    limits: QueueLimits,
    policy: OverflowPolicy,
}

impl SubscriberQueue {
    pub fn new(limits: QueueLimits, policy: OverflowPolicy) -> Self {
        SubscriberQueue {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            limits,
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the client, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message, applying the overflow policy. Returns what the policy dropped.
    pub fn push(&self, message: Arc<Message>) -> OverflowCounts {
        let mut state = self.lock();
        if state.closed.is_some() {
            return OverflowCounts::default();
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
        let mut state = self.lock();
        if let Some(message) = state.items.pop_front() {
            state.bytes -= message.payload_bytes();
            let skipped = std::mem::take(&mut state.skipped);
            return Some(Delivery::Message { message, skipped });
        }
        state.closed.map(Delivery::Closed)
    }

    /// Waits for the next delivery. Cancel-safe: nothing is taken until it returns.
    pub async fn recv(&self) -> Delivery {
        loop {
            if let Some(delivery) = self.try_recv() {
                return delivery;
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
            queue.push(message(seq));
        }
        // 1,2,3 fill it; 4 conflates to [4]; 5 fits.
        assert_eq!(drain(&queue), vec![(4, 3), (5, 0)]);
        assert_eq!(queue.counts().dropped, 3);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_window() {
        let queue = queue(OverflowPolicy::DropOldest);
        for seq in 1..=5 {
            queue.push(message(seq));
        }
        assert_eq!(drain(&queue), vec![(3, 2), (4, 0), (5, 0)]);
    }

    #[test]
    fn disconnect_closes_and_discards() {
        let queue = queue(OverflowPolicy::Disconnect);
        for seq in 1..=4 {
            queue.push(message(seq));
        }
        assert!(matches!(
            queue.try_recv(),
            Some(Delivery::Closed(CloseReason::Overflow))
        ));
        assert!(queue.counts().disconnected);
        queue.push(message(5));
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
            queue.push(message(seq));
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
        queue.push(message(1));
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("recv wakes up")
            .expect("task ok");
        assert!(matches!(delivery, Delivery::Message { message, .. } if message.cursor.seq == 1));
    }
}
