//! A topic's fan-out: every subscriber's queue (or its direct sink) gets each message, in
//! append order, outside the state lock, with direct writes paced by the publish rate.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{FanOutList, Topic, TopicState};
use crate::hub::message::Message;
use crate::hub::subscriber::SubscriberQueue;

/// While messages come faster than one per this interval (smoothed over the last several),
/// they are queued for every subscriber, not written directly: under a high rate each
/// client's task takes several messages in one write (one `send` for many), and the
/// publisher is not held up by one `send` per client per message. At a lower rate each
/// message is its own `send` either way, and the direct write saves the wake-ups. Smoothed
/// (1/8 per message) so that one late publish in a burst does not switch it.
pub(super) const DIRECT_MIN_INTERVAL: Duration = Duration::from_millis(20);
/// One interval counts for at most this much in the smoothing: after an idle spell the
/// first messages go direct, and a burst then switches to the queues within ~20 messages.
pub(super) const INTERVAL_CAP: Duration = Duration::from_millis(200);
/// At most this long of direct writes in one fan-out (checked every 64 subscribers); the
/// rest of the subscribers get the message through their queues, on every core.
const DIRECT_BUDGET: Duration = Duration::from_millis(100);

/// How many subscribers ahead of the one being written the fan-out asks for each of the
/// three allocations a direct write reads, in the order the write reads them: the queue,
/// its sink, the sink's socket state. Each is asked for once the one before it (which holds
/// its pointer) has had time to arrive.
const PREFETCH_QUEUE_AHEAD: usize = 6;
const PREFETCH_SINK_AHEAD: usize = 4;
const PREFETCH_SOCKET_AHEAD: usize = 2;

/// See [`crate::hub::prefetch`]: the next direct writes' memory, asked for ahead.
fn prefetch_ahead(queues: &[(u64, Arc<SubscriberQueue>)], index: usize) {
    if let Some((_, queue)) = queues.get(index + PREFETCH_QUEUE_AHEAD) {
        crate::hub::prefetch::prefetch(Arc::as_ptr(queue));
    }
    if let Some((_, queue)) = queues.get(index + PREFETCH_SINK_AHEAD) {
        queue.prefetch_sink(0);
    }
    if let Some((_, queue)) = queues.get(index + PREFETCH_SOCKET_AHEAD) {
        queue.prefetch_sink(1);
    }
}

/// How fast the topic's messages come (see [`DIRECT_MIN_INTERVAL`]).
#[derive(Debug, Default)]
pub(super) struct FanOutPace {
    last_start: Option<Instant>,
    smoothed_interval: Option<Duration>,
}

impl FanOutPace {
    /// Records a fan-out starting at `now`; whether it may write directly.
    fn direct_now(&mut self, now: Instant) -> bool {
        let Some(last) = self.last_start.replace(now) else {
            return true;
        };
        let interval = now.saturating_duration_since(last).min(INTERVAL_CAP);
        let smoothed = match self.smoothed_interval {
            Some(smoothed) => smoothed * 7 / 8 + interval / 8,
            None => interval,
        };
        self.smoothed_interval = Some(smoothed);
        smoothed >= DIRECT_MIN_INTERVAL
    }
}

impl Topic {
    pub(super) fn lock_fan_out_order(&self) -> MutexGuard<'_, FanOutPace> {
        self.fan_out_order.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `message` for every subscriber (or hands it to their direct sinks) after
    /// releasing the state lock, still in append order (`order`), and records it.
    pub(super) fn fan_out(
        &self,
        mut pace: MutexGuard<'_, FanOutPace>,
        mut state: MutexGuard<'_, TopicState>,
        message: &Arc<Message>,
    ) {
        let queues = match &state.fan_out_list {
            Some(list) => list.clone(),
            None => {
                let list: FanOutList = state
                    .subscribers
                    .iter()
                    .map(|(id, queue)| (*id, queue.clone()))
                    .collect();
                state.fan_out_list = Some(list.clone());
                list
            }
        };
        // A subscriber that joins from here on got this message in its backlog (or starts
        // after it); one that leaves gets a push into a queue nobody reads.
        drop(state);
        let mut dropped = 0;
        let mut disconnected = 0;
        let started = Instant::now();
        let mut direct = pace.direct_now(started);
        let mut ended = Vec::new();
        for (index, (id, queue)) in queues.iter().enumerate() {
            if direct && index % 64 == 63 && started.elapsed() >= DIRECT_BUDGET {
                direct = false;
            }
            if direct {
                prefetch_ahead(&queues, index);
            }
            let counts = queue.push(message.clone(), direct);
            dropped += counts.dropped;
            disconnected += u64::from(counts.disconnected);
            if counts.ended {
                ended.push(*id);
            }
        }
        drop(pace);
        // Subscribers whose sink took the one message they wait for (a long poll's answer)
        // leave the topic now, all under one lock, not each when its task next runs.
        self.unsubscribe_all(&ended);
        if let Some(observer) = crate::hub::events::observer() {
            observer.published(
                &self.key.name,
                self.settings.on_full.name(),
                dropped,
                disconnected,
            );
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.counters
            .disconnected
            .fetch_add(disconnected, Ordering::Relaxed);
    }
}
