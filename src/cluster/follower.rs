//! One follower per topic instance on every sidecar where it lives: it loads the shared
//! history into the local ring, then feeds each message from the instance's channel into the
//! topic in `seq` order (so encode-once fan-out, every transport and every overflow policy
//! work exactly as on a single sidecar). Rules (`../shared/scaleout.md` §4):
//! `seq = last + 1` deliver; `seq ≤ last` drop; `seq > last + 1` fetch the missing range from
//! the stream first; another epoch, or a range the stream no longer has: start over from the
//! stream and end the local subscriptions, whose clients reconnect and are told `reset`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bus::Dirty;
use super::keys::InstanceKeys;
use super::store::{parse_channel_message, HistoryReply};
use super::Cluster;
use crate::hub::{Cursor, Payload, Topic};
use crate::metrics::METRICS;
use crate::upstream::backoff::Backoff;

/// A topic that looks quiet is checked against the stream this often, which catches a
/// subscription that died without the connection noticing.
const TOP_CHECK: Duration = Duration::from_secs(30);
/// After a disconnection the catch-up runs again this much later: the resubscription may
/// only have completed after the first one.
const SECOND_LOOK: Duration = Duration::from_secs(1);

pub struct Follower {
    pub cluster: Arc<Cluster>,
    pub topic: Arc<Topic>,
    pub keys: InstanceKeys,
    pub stop: CancellationToken,
}

impl Follower {
    pub async fn run(self) {
        let (intake_tx, mut intake) = mpsc::channel::<Bytes>(self.cluster.settings.intake_max_messages);
        let dirty = Arc::new(Dirty::default());
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Subscribe first, then read the history: whatever is published in between arrives
        // on the channel too, and `seq ≤ last` drops the overlap (no duplicate at the join).
        loop {
            let subscribed = tokio::select! {
                _ = self.stop.cancelled() => return,
                subscribed = self.cluster.bus.subscribe(&self.keys.channel, intake_tx.clone(), dirty.clone()) => subscribed,
            };
            match subscribed {
                Ok(()) => break,
                Err(error) => {
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 && !self.cluster.health.is_degraded() {
                        tracing::warn!(topic = %self.topic.key(), retry_in_ms = delay.as_millis() as u64, "cannot subscribe to the topic's channel: {error}");
                    } else {
                        tracing::debug!(topic = %self.topic.key(), retry_in_ms = delay.as_millis() as u64, "cannot subscribe to the topic's channel: {error}");
                    }
                    // Until Redis answers, the instance serves what it has (nothing yet).
                    self.topic.mark_synced();
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let mut state = FollowState::default();
        self.sync_until_done(&mut state, false).await;
        self.topic.mark_synced();
        let mut check = tokio::time::interval(TOP_CHECK);
        check.reset();
        let mut second_look: Option<tokio::time::Instant> = None;
        let mut health = self.cluster.health.watch();
        // Degraded: nothing to catch up from; the catch-up waits for Redis to be back. Only
        // the `changed` arm marks the health seen, so a flip while an arm runs is not missed.
        let mut degraded = *health.borrow_and_update();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                message = intake.recv() => {
                    let Some(message) = message else { break };
                    // Degraded, this sidecar's sources own the topic's sequence; Redis may
                    // answer again before the health check says so. The rejoin reads what
                    // was published meanwhile from the stream.
                    if !degraded {
                        self.receive(&mut state, &message).await;
                    }
                }
                _ = dirty.wake.notified(), if !degraded => {
                    if dirty.take() {
                        self.catch_up(&mut state).await;
                        second_look = Some(tokio::time::Instant::now() + SECOND_LOOK);
                    }
                }
                _ = async { tokio::time::sleep_until(second_look.unwrap_or_else(tokio::time::Instant::now)).await }, if second_look.is_some() && !degraded => {
                    second_look = None;
                    self.catch_up(&mut state).await;
                }
                _ = check.tick(), if !degraded => self.catch_up(&mut state).await,
                changed = health.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Health only notifies on a flip, so a `false` here ends a degraded
                    // spell, even one this arm never saw begin (a flip and back while another
                    // arm ran): the source may have served alone in it.
                    degraded = *health.borrow_and_update();
                    if !degraded {
                        self.rejoin(&mut state).await;
                        second_look = Some(tokio::time::Instant::now() + SECOND_LOOK);
                    }
                }
            }
        }
        self.cluster.bus.unsubscribe(&self.keys.channel).await;
    }

    /// Redis is back after a degraded spell: an instance that published nothing alone is
    /// caught up like after any disconnection; one that did reloads the shared history and
    /// ends its subscriptions (one `reset` for each of their clients).
    async fn rejoin(&self, state: &mut FollowState) {
        if self.topic.rejoin() {
            self.catch_up(state).await;
        } else {
            tracing::info!(topic = %self.topic.key(), "rejoining the shared history; clients served alone here will be told to reset");
            METRICS.cluster_gap_repairs.with_label_values(&["reset"]).inc();
            self.sync_until_done(state, true).await;
        }
    }

    fn history_count(&self) -> usize {
        self.topic.settings().history.max_messages
    }

    /// Loads the newest entries and starts the local ring over from them. Retries with
    /// backoff until Redis answers or the follower stops.
    async fn sync_until_done(&self, state: &mut FollowState, end_subscribers: bool) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self
                .cluster
                .store
                .history(&self.keys, None, self.history_count())
                .await
            {
                Ok(reply) => {
                    self.restart(state, reply, end_subscribers);
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    // One line when it starts failing; the retries (and a degraded spell,
                    // which has its own line) are debug-level.
                    if backoff.failures() == 1 && !self.cluster.health.is_degraded() {
                        tracing::warn!(topic = %self.topic.key(), retry_in_ms = delay.as_millis() as u64, "cannot read the shared history: {error}");
                    } else {
                        tracing::debug!(topic = %self.topic.key(), retry_in_ms = delay.as_millis() as u64, "cannot read the shared history: {error}");
                    }
                    // Requests are not held while Redis is away: they see the local data.
                    self.topic.mark_synced();
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn restart(&self, state: &mut FollowState, reply: HistoryReply, end_subscribers: bool) {
        let HistoryReply {
            epoch,
            top,
            entries,
            stale,
            ..
        } = reply;
        if !self.topic.restart_history(epoch, top, entries, end_subscribers) {
            // Serving alone: the rejoin loads the history again once the cut-off is over.
            tracing::debug!(topic = %self.topic.key(), "the shared history is not loaded while the topic is served alone");
            return;
        }
        // A sidecar that starts following while the holder's backend fails says so at once.
        match stale {
            Some(reason) => self.topic.record_upstream_failure(reason),
            None if self.topic.is_stale() => self.topic.record_upstream_success(),
            None => {}
        }
        state.last = Some(Cursor { epoch, seq: top });
    }

    async fn receive(&self, state: &mut FollowState, message: &[u8]) {
        if let Some(health) = message.strip_prefix(b"!") {
            // The lease holder's view of the backend, so clients here hear of stale data.
            match health.split_first() {
                Some((b'1', reason)) => self.topic.record_upstream_failure(
                    String::from_utf8_lossy(reason.strip_prefix(b"\n").unwrap_or(reason)).into_owned(),
                ),
                _ => self.topic.record_upstream_success(),
            }
            return;
        }
        let Some((cursor, payload)) = parse_channel_message(message) else {
            tracing::warn!(topic = %self.topic.key(), "ignored a malformed message on the topic's channel");
            return;
        };
        let Some(last) = state.last else {
            return self.catch_up(state).await;
        };
        if cursor.epoch != last.epoch {
            tracing::info!(topic = %self.topic.key(), "the shared history has a new epoch; clients will be told to reset");
            METRICS.cluster_gap_repairs.with_label_values(&["reset"]).inc();
            return self.sync_until_done(state, true).await;
        }
        if cursor.seq <= last.seq {
            return;
        }
        if cursor.seq == last.seq + 1 {
            self.deliver(state, cursor, payload);
            return;
        }
        // A hole: the entries in between are in the stream (the script appends before it
        // publishes), and so is this one.
        self.catch_up(state).await;
        if state
            .last
            .is_some_and(|last| last.seq + 1 == cursor.seq && last.epoch == cursor.epoch)
        {
            self.deliver(state, cursor, payload);
        }
    }

    fn deliver(&self, state: &mut FollowState, cursor: Cursor, payload: Payload) {
        if self.topic.deliver(cursor, payload) {
            state.last = Some(cursor);
            METRICS.cluster_pubsub_deliveries.inc();
        }
    }

    /// Brings the local ring up to the stream's top: what came after `last`, or a restart
    /// when the stream no longer covers it.
    async fn catch_up(&self, state: &mut FollowState) {
        let Some(last) = state.last else {
            return self.sync_until_done(state, true).await;
        };
        let count = self.history_count();
        let mut since = last;
        let mut repaired = false;
        // Bounded: each round moves `since` forward by up to `count` entries, and the stream
        // holds at most `count` in total, so two rounds cover a catch-up that races new
        // publishes; what is still newer arrives over Pub/Sub.
        for _ in 0..4 {
            let reply = match self
                .cluster
                .store
                .history(&self.keys, Some(since.seq), count)
                .await
            {
                Ok(reply) => reply,
                Err(error) => {
                    if self.cluster.health.is_degraded() {
                        tracing::debug!(topic = %self.topic.key(), "cannot catch up from the shared history: {error}");
                    } else {
                        tracing::warn!(topic = %self.topic.key(), "cannot catch up from the shared history: {error}");
                    }
                    return;
                }
            };
            let gap = reply.top > since.seq && reply.first_retained > since.seq + 1;
            if reply.epoch != since.epoch || gap || reply.top < since.seq {
                tracing::info!(topic = %self.topic.key(), "missed messages are no longer in the shared history; clients will be told to reset");
                METRICS.cluster_gap_repairs.with_label_values(&["reset"]).inc();
                return self.sync_until_done(state, true).await;
            }
            if reply.entries.is_empty() {
                break;
            }
            for (cursor, payload) in reply.entries {
                self.deliver(state, cursor, payload);
                repaired = true;
            }
            match state.last {
                Some(last) if last.seq < reply.top => since = last,
                _ => break,
            }
        }
        if repaired {
            METRICS.cluster_gap_repairs.with_label_values(&["repaired"]).inc();
        }
    }
}

#[derive(Default)]
struct FollowState {
    /// The last message applied to the local ring.
    last: Option<Cursor>,
}
