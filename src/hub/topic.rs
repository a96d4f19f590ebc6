//! One topic instance: its history and cursor, its latest state, and its subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::cursor::{Cursor, Epoch};
use super::history::{History, HistoryLimits, Replay};
use super::message::{Message, Payload};
use super::subscriber::{CloseReason, OverflowPolicy, QueueLimits, SubscriberQueue};
pub use super::topic_key::TopicKey;
use fan_out::FanOutPace;

/// What a message of the topic means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each message is the whole current state; a new subscriber starts with the latest.
    State,
    /// Each message is an event; missing one matters, so resume replays history.
    Events,
}

/// Everything the hub needs to know about a topic's behaviour.
#[derive(Clone, Debug)]
pub struct TopicSettings {
    pub mode: Mode,
    pub history: HistoryLimits,
    pub queue: QueueLimits,
    pub on_full: OverflowPolicy,
    /// `deltas = true`: each state message also carries the JSON Patch from the previous one.
    pub deltas: bool,
    /// How long an instance without subscribers (or requests) is kept before it is reaped.
    pub idle_linger: Duration,
}

/// Where a new subscriber wants to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No cursor: the latest state for state topics, "from now" for event topics.
    Latest,
    /// Continue after this cursor.
    After(Cursor),
    /// The client sent a cursor that cannot be parsed; treated like an unknown one.
    Unknown,
}

/// The result of subscribing: what to send first, then the live subscription.
#[derive(Debug)]
pub struct Subscribe {
    /// `Some(position)` when the client's cursor was unknown: it must be told to reset, and
    /// `position` is the cursor the backlog continues from.
    pub reset: Option<Cursor>,
    /// Messages to send before anything live, oldest first.
    pub backlog: Vec<Arc<Message>>,
    /// The topic's cursor at subscription time: live messages follow it.
    pub start: Cursor,
    pub subscription: Subscription,
}

/// The backend's recent health as seen by this topic's upstream task (serve-stale).
#[derive(Clone, Debug, Default)]
pub struct UpstreamHealth {
    pub last_success: Option<Instant>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// What is queued for a topic's subscribers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub messages: usize,
    pub bytes: usize,
    pub largest_bytes: usize,
}

/// Monotonic counters of one topic instance.
#[derive(Debug, Default)]
pub struct TopicCounters {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub disconnected: AtomicU64,
}

/// How many idempotency keys a topic remembers, and for how long.
const IDEMPOTENCY_KEYS: usize = 4096;
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// The outcome of a publish with an idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub cursor: Cursor,
    /// The key was seen within the window: nothing was delivered again.
    pub duplicate: bool,
}

/// Every subscriber's id and queue, as the fan-out goes through them.
type FanOutList = Arc<[(u64, Arc<SubscriberQueue>)]>;

#[derive(Debug)]
struct TopicState {
    history: History,
    recent_keys: std::collections::VecDeque<(String, Cursor, Instant)>,
    /// Keyed by the topic's own counter, so a fast hash (not SipHash, whose resistance to
    /// chosen keys is not needed here: a long poll inserts and removes one per request).
    subscribers: HashMap<u64, Arc<SubscriberQueue>, foldhash::fast::RandomState>,
    /// The queues as one list for the fan-out, made again only after the set changed.
    fan_out_list: Option<FanOutList>,
    next_subscriber_id: u64,
    last_activity: Instant,
    upstream: UpstreamHealth,
    closed: bool,
    /// Between [`Topic::serve_alone`] and [`Topic::rejoin`].
    serving_alone: bool,
}

#[derive(Debug)]
pub struct Topic {
    key: TopicKey,
    settings: TopicSettings,
    state: Mutex<TopicState>,
    /// Held from an append to the end of its fan-out (taken before `state`): messages reach
    /// every queue in cursor order while the fan-out itself, which may write straight to
    /// sockets, runs outside the state lock that subscribes and polls need.
    fan_out_order: Mutex<FanOutPace>,
    /// `true` while the upstream is failing and the data served is the last good one.
    stale: tokio::sync::watch::Sender<bool>,
    /// Counts requests for the instance (short polls, subscribes): an upstream that polls
    /// only on demand waits for it to move past what it saw when its last request started.
    demand: tokio::sync::watch::Sender<u64>,
    /// An eager instance: kept (and polled on its timer) without any client.
    pinned: std::sync::atomic::AtomicBool,
    /// Set by [`Topic::close`]: the registry no longer holds this instance (every removal
    /// closes it), so a request holding it from before must look it up again.
    closed: std::sync::atomic::AtomicBool,
    /// `false` until a clustered instance has loaded the shared history.
    synced: tokio::sync::watch::Sender<bool>,
    /// The epoch of the shared log the history follows; changes on a restart onto another.
    shared_epoch: tokio::sync::watch::Sender<Option<Epoch>>,
    pub counters: TopicCounters,
    stats: super::stats::TopicStats,
}

impl Topic {
    pub fn new(key: TopicKey, settings: TopicSettings) -> Arc<Self> {
        let mut history = History::new(Epoch::random(), settings.history);
        if settings.deltas {
            history = history.with_deltas(key.name.clone());
        }
        Arc::new(Topic {
            key,
            settings,
            fan_out_order: Mutex::new(FanOutPace::default()),
            state: Mutex::new(TopicState {
                history,
                recent_keys: std::collections::VecDeque::new(),
                subscribers: HashMap::default(),
                fan_out_list: None,
                next_subscriber_id: 0,
                last_activity: Instant::now(),
                upstream: UpstreamHealth::default(),
                closed: false,
                serving_alone: false,
            }),
            counters: TopicCounters::default(),
            stats: super::stats::TopicStats::default(),
            stale: tokio::sync::watch::Sender::new(false),
            demand: tokio::sync::watch::Sender::new(0),
            pinned: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            synced: tokio::sync::watch::Sender::new(true),
            shared_epoch: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Follows the stale flag (transports tell their clients when it flips).
    pub fn watch_stale(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stale.subscribe()
    }

    /// Whether [`Topic::close`] ended this instance (it is out of the registry).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn is_stale(&self) -> bool {
        *self.stale.borrow()
    }

    fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn key(&self) -> &TopicKey {
        &self.key
    }

    pub fn settings(&self) -> &TopicSettings {
        &self.settings
    }

    /// What the instance's transports and upstream did, for the admin API.
    pub fn stats(&self) -> &super::stats::TopicStats {
        &self.stats
    }

    /// Assigns the next cursor, encodes once, keeps it in history and queues it for every
    /// subscriber. Never waits for a subscriber.
    pub fn publish(&self, payload: Payload) -> Arc<Message> {
        let order = self.lock_fan_out_order();
        let mut state = self.lock();
        let message = state.history.append(payload);
        self.fan_out(order, state, &message);
        message
    }

    /// Like [`Topic::publish`] for a message whose cursor the cluster's sequencer assigned.
    /// Only the next `seq` of the current epoch is taken (`false` otherwise): the caller
    /// orders messages and repairs gaps before handing them over.
    pub fn deliver(&self, cursor: Cursor, payload: Payload) -> bool {
        let order = self.lock_fan_out_order();
        let mut state = self.lock();
        let Some(message) = state.history.append_at(cursor, payload) else {
            return false;
        };
        self.fan_out(order, state, &message);
        true
    }

    /// Replaces the history with what a shared log holds: `top` of `epoch`, and `kept`
    /// (oldest first, ending at `top`). When this is not a continuation of what subscribers
    /// were following (another epoch, or a gap the log no longer covers) they are closed:
    /// they reconnect with their cursor and are told `reset`, never left with a silent gap.
    ///
    /// Refused (`false`, nothing changes) while the instance serves alone: until
    /// [`Topic::rejoin`] the local source owns the sequence. A follower that hears from Redis
    /// before its sidecar has noticed the cut-off is over would otherwise pull the topic onto
    /// the shared log under a source still serving alone — which then starts a local epoch
    /// again on top of it, and clients are told `reset` twice.
    pub fn restart_history(
        &self,
        epoch: Epoch,
        top: u64,
        kept: Vec<(Cursor, Payload)>,
        end_subscribers: bool,
    ) -> bool {
        let mut state = self.lock();
        if state.serving_alone {
            return false;
        }
        // Subscribers that received messages this sidecar published alone are on another
        // sequence than the shared log's, whatever the caller knows.
        let end_subscribers = end_subscribers || state.history.diverged();
        let first = kept
            .first()
            .map_or(top, |(cursor, _)| cursor.seq.saturating_sub(1));
        state.history.restart_at(epoch, first);
        for (cursor, payload) in kept {
            state.history.append_at(cursor, payload);
        }
        if end_subscribers {
            for (_, queue) in state.subscribers.drain() {
                queue.close(CloseReason::TopicClosed);
            }
            state.fan_out_list = None;
        }
        drop(state);
        self.shared_epoch
            .send_if_modified(|current| current.replace(epoch) != Some(epoch));
        true
    }

    /// Follows the epoch of the shared log (`None` before the first sync): a cluster's lease
    /// holder starts its source over when it changes, so the new epoch gets the current state.
    pub fn watch_shared_epoch(&self) -> tokio::sync::watch::Receiver<Option<Epoch>> {
        self.shared_epoch.subscribe()
    }

    /// Serves this instance alone from now on, under a new epoch of its own, without ending
    /// any subscription: a clustered sidecar cut off from Redis. Subscribers and cursors up to
    /// now go on seamlessly; what follows carries the new epoch, so no other sidecar (nor the
    /// cluster later) can mistake it for its own sequence. Returns the epoch that
    /// [`Topic::publish_in`] takes; already serving alone, the current one.
    ///
    /// `None` when `still_cut_off` says no: it is asked under the topic's lock, so a caller
    /// that saw the cut-off a moment ago cannot switch a history that has just rejoined the
    /// shared log (the rejoin takes this lock after the cut-off ended). Without that, a local
    /// epoch could continue the *shared* sequence and its clients get a second `reset`.
    pub fn serve_alone(&self, still_cut_off: impl FnOnce() -> bool) -> Option<Epoch> {
        let mut state = self.lock();
        if !still_cut_off() {
            return None;
        }
        // Already diverged (serving alone again before the shared history was reloaded):
        // its own epoch goes on.
        if !state.serving_alone && !state.history.diverged() {
            state.history.continue_as(Epoch::random());
        }
        state.serving_alone = true;
        Some(state.history.cursor().epoch)
    }

    /// Ends [`Topic::serve_alone`]. When nothing was published alone, the instance is back on
    /// the epoch it left and `true` says so: its subscribers need no reset. `false`: the local
    /// sequence diverged and the caller restarts the history (ending the subscriptions).
    pub fn rejoin(&self) -> bool {
        let mut state = self.lock();
        state.serving_alone = false;
        state.history.resume_continued() || !state.history.diverged()
    }

    /// Like [`Topic::publish`], only while the instance is still on `epoch` (`None`
    /// otherwise): a source serving alone must never append to a history that rejoined the
    /// shared log, whose cursors it does not own.
    pub fn publish_in(&self, epoch: Epoch, payload: Payload) -> Option<Arc<Message>> {
        let order = self.lock_fan_out_order();
        let mut state = self.lock();
        if state.history.cursor().epoch != epoch {
            return None;
        }
        let message = state.history.append(payload);
        self.fan_out(order, state, &message);
        Some(message)
    }

    /// The instance follows a shared log: requests wait (bounded) for its first sync.
    pub fn expect_sync(&self) {
        self.synced.send_replace(false);
    }

    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Waits until the history is synced with the shared log, at most `max`: past it the
    /// request is served from what is here (a slow Redis must not hold clients forever).
    pub async fn wait_synced(&self, max: Duration) -> bool {
        // Nearly always so: no receiver, no timer (a long poll asks on every request).
        if *self.synced.borrow() {
            return true;
        }
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(max, synced.wait_for(|synced| *synced))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Publishes unless `key` was already published within the idempotency window, in which
    /// case the original cursor is returned and nothing is delivered again.
    pub fn publish_once(&self, key: Option<&str>, payload: Payload) -> Published {
        let Some(key) = key else {
            return Published {
                cursor: self.publish(payload).cursor,
                duplicate: false,
            };
        };
        {
            let mut state = self.lock();
            let now = Instant::now();
            while state
                .recent_keys
                .front()
                .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > IDEMPOTENCY_WINDOW)
            {
                state.recent_keys.pop_front();
            }
            if let Some((_, cursor, _)) = state.recent_keys.iter().find(|(seen, _, _)| seen == key) {
                return Published {
                    cursor: *cursor,
                    duplicate: true,
                };
            }
        }
        // Two publishes racing with the same key could both get here; publishers retry one
        // request at a time, so that window is accepted rather than holding the lock over
        // the fan-out.
        let cursor = self.publish(payload).cursor;
        let mut state = self.lock();
        if state.recent_keys.len() >= IDEMPOTENCY_KEYS {
            state.recent_keys.pop_front();
        }
        state
            .recent_keys
            .push_back((key.to_string(), cursor, Instant::now()));
        Published {
            cursor,
            duplicate: false,
        }
    }

    /// Registers a subscriber and computes, atomically with the registration, what it must
    /// be sent first, so that no message falls between the backlog and the live queue.
    pub fn subscribe(self: &Arc<Self>, resume: Resume) -> Subscribe {
        let queue = Arc::new(SubscriberQueue::new(self.settings.queue, self.settings.on_full));
        let mut state = self.lock();
        let (reset, backlog) = self.backlog_for(&state.history, resume);
        if resume != Resume::Latest {
            let outcome = if reset.is_some() { "reset" } else { "replayed" };
            if let Some(observer) = super::events::observer() {
                observer.resumed(self, outcome);
            }
        }
        let start = state.history.cursor();
        let id = state.next_subscriber_id;
        state.next_subscriber_id += 1;
        if state.closed {
            queue.close(CloseReason::TopicClosed);
        } else {
            state.subscribers.insert(id, queue.clone());
            state.fan_out_list = None;
        }
        state.last_activity = Instant::now();
        drop(state);
        self.note_demand();
        Subscribe {
            reset,
            backlog,
            start,
            subscription: Subscription {
                topic: self.clone(),
                id,
                queue,
            },
        }
    }

    fn backlog_for(&self, history: &History, resume: Resume) -> (Option<Cursor>, Vec<Arc<Message>>) {
        let latest_only = || history.latest().cloned().into_iter().collect::<Vec<_>>();
        let replay = match resume {
            Resume::Latest => {
                return match self.settings.mode {
                    Mode::State => (None, latest_only()),
                    Mode::Events => (None, Vec::new()),
                };
            }
            Resume::After(cursor) => history.after(cursor),
            Resume::Unknown => Replay::Unknown,
        };
        match (replay, self.settings.mode) {
            (Replay::After(messages), _) => (None, messages),
            (Replay::Unknown, Mode::State) => {
                let latest = latest_only();
                let position = Cursor {
                    seq: latest.first().map_or(0, |m| m.cursor.seq.saturating_sub(1)),
                    ..history.cursor()
                };
                (Some(position), latest)
            }
            (Replay::Unknown, Mode::Events) => {
                let kept = history.all();
                let position = Cursor {
                    seq: kept.first().map_or(history.cursor().seq, |m| m.cursor.seq - 1),
                    ..history.cursor()
                };
                (Some(position), kept)
            }
        }
    }

    fn unsubscribe(&self, id: u64) {
        self.unsubscribe_all(&[id]);
    }

    fn unsubscribe_all(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.lock();
        for id in ids {
            if state.subscribers.remove(id).is_some() {
                state.fan_out_list = None;
            }
        }
        state.last_activity = Instant::now();
    }

    /// The newest message, the one a short poll serves.
    pub fn latest(&self) -> Option<Arc<Message>> {
        self.lock().history.latest().cloned()
    }

    pub fn cursor(&self) -> Cursor {
        self.lock().history.cursor()
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Messages and bytes waiting in all subscriber queues, and the largest single queue in
    /// bytes: what slow clients cost right now.
    pub fn queue_depth(&self) -> QueueDepth {
        let state = self.lock();
        let mut depth = QueueDepth::default();
        for queue in state.subscribers.values() {
            let bytes = queue.queued_bytes();
            depth.messages += queue.len();
            depth.bytes += bytes;
            depth.largest_bytes = depth.largest_bytes.max(bytes);
        }
        depth
    }

    /// Marks the instance as in use by a request that does not subscribe (short poll), so
    /// the linger counts from the last such request.
    pub fn touch(&self) {
        self.lock().last_activity = Instant::now();
        self.note_demand();
    }

    /// Marks the instance as wanted without clients (an eager topic).
    pub fn pin(&self) {
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// Whether someone waits on this instance's updates: a subscriber (SSE, WebSocket, long
    /// poll) or its being eager. Instances that are not held are refreshed only on demand.
    pub fn is_held(&self) -> bool {
        self.pinned.load(Ordering::Relaxed) || self.subscriber_count() > 0
    }

    /// Tells the instance's poller, if one follows the requests, that one came. Without a
    /// receiver (a push or stream topic) nothing is sent: a receiver made later starts from
    /// the value it finds, and a send wakes every waiter slot under its locks (~300
    /// instructions of each long poll's subscribe).
    fn note_demand(&self) {
        if self.demand.receiver_count() > 0 {
            self.demand.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Follows the requests for the instance (every [`Topic::touch`] and subscribe).
    pub fn watch_demand(&self) -> tokio::sync::watch::Receiver<u64> {
        self.demand.subscribe()
    }

    /// `Some(idle time)` when nobody is subscribed; `None` while anyone is.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        let state = self.lock();
        if state.subscribers.is_empty() {
            Some(now.saturating_duration_since(state.last_activity))
        } else {
            None
        }
    }

    pub fn record_upstream_success(&self) {
        let mut state = self.lock();
        state.upstream.last_success = Some(Instant::now());
        state.upstream.consecutive_failures = 0;
        state.upstream.last_error = None;
        drop(state);
        self.stale
            .send_if_modified(|stale| std::mem::replace(stale, false));
    }

    pub fn record_upstream_failure(&self, error: String) {
        let mut state = self.lock();
        state.upstream.consecutive_failures += 1;
        state.upstream.last_error = Some(error);
        drop(state);
        self.stale
            .send_if_modified(|stale| !std::mem::replace(stale, true));
    }

    pub fn upstream_health(&self) -> UpstreamHealth {
        self.lock().upstream.clone()
    }

    /// Ends every subscription; later subscribers are closed at once.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.closed.store(true, Ordering::Release);
        for queue in state.subscribers.values() {
            queue.close(CloseReason::TopicClosed);
        }
    }
}

mod deltas;
mod fan_out;
mod subscription;

pub use subscription::Subscription;
#[cfg(test)]
mod tests;
