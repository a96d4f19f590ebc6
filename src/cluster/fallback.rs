//! Redis gone: after `fallback_after_ms` without an answer the cluster is *degraded* and every
//! sidecar serves its topics alone — its own poller or backend stream, under a local epoch of
//! its own — so every client stays connected and keeps receiving. When Redis answers again
//! the sidecars rejoin: each locally served instance reloads the shared history and ends its
//! subscriptions once (their clients reconnect and are told `reset`); an instance that
//! published nothing alone rejoins without a reset. Pushes are refused while degraded (a
//! publish reaching one sidecar only would be a silent partial delivery).
//!
//! The local epoch is what keeps this honest: a cursor a sidecar hands out alone can never be
//! mistaken for the cluster's (or another sidecar's) sequence, while cursors from before the
//! switch stay valid on the sidecar that switched (`Topic::serve_alone`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::LeasedSource;
use super::Cluster;
use crate::hub::{Epoch, Payload, Topic};
use crate::metrics::METRICS;
use crate::upstream::poll::state_hash;
use crate::upstream::sink::{Continuity, Sink, SinkError};
use crate::upstream::SourceStart;

/// While the Pub/Sub connection is silent but Redis answers, followers catch up this often.
const PUBSUB_SILENT_REPAIR: Duration = Duration::from_secs(5);

/// `true` while degraded. One per sidecar; followers and leased sources watch it.
pub struct Health(watch::Sender<bool>);

impl Default for Health {
    fn default() -> Self {
        Health(watch::Sender::new(false))
    }
}

impl Health {
    pub fn is_degraded(&self) -> bool {
        *self.0.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    fn set(&self, degraded: bool) -> bool {
        self.0
            .send_if_modified(|current| std::mem::replace(current, degraded) != degraded)
    }
}

/// Pings Redis (both connections) until `shutdown`, and flips [`Health`]: degraded once no
/// ping succeeded for `fallback_after`, back at the first one that does.
pub async fn watch_redis(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let fallback_after = cluster.settings.fallback_after;
    let period = (fallback_after / 4).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = cluster.settings.redis_timeout;
    let mut last_answer = Instant::now();
    // While the Pub/Sub connection is silent and Redis is not: when followers were last told
    // to catch up.
    let mut pubsub_repaired_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // Each call is bounded by the connection's response timeout; the outer timeout also
        // bounds a reconnection in progress.
        let (commands, pubsub) = tokio::join!(
            tokio::time::timeout(deadline, cluster.store.ping()),
            // A ping is also what gets a dropped Pub/Sub connection reconnected (and its
            // channels resubscribed) while no other call is made on it.
            tokio::time::timeout(deadline, cluster.bus.ping()),
        );
        let now = Instant::now();
        let commands_answered = matches!(commands, Ok(Ok(())));
        let answered = matches!(pubsub, Ok(Ok(())));
        if answered {
            pubsub_repaired_at = None;
        } else if commands_answered {
            // Redis answers, its Pub/Sub connection does not: messages may be stuck or lost
            // without any disconnection to say so. Every follower catches up from the streams
            // at once and every PUBSUB_SILENT_REPAIR while it lasts, not only at its periodic
            // check.
            let due =
                pubsub_repaired_at.is_none_or(|since| now.duration_since(since) >= PUBSUB_SILENT_REPAIR);
            if due {
                if pubsub_repaired_at.is_none() {
                    tracing::warn!("the Redis Pub/Sub connection does not answer while Redis does; followers catch up from the streams");
                }
                pubsub_repaired_at = Some(now);
                cluster.bus.routes.mark_all_dirty();
            }
        }
        if commands_answered {
            last_answer = now;
            if cluster.health.set(false) {
                METRICS.cluster_degraded.set(0);
                METRICS
                    .cluster_degraded_transitions
                    .with_label_values(&["cluster"])
                    .inc();
                tracing::info!("cluster resumed: Redis answers again; topics rejoin the shared history (clients of topics served alone are told `reset` once)");
            }
        } else if now.saturating_duration_since(last_answer) >= fallback_after && cluster.health.set(true) {
            METRICS.cluster_degraded.set(1);
            METRICS
                .cluster_degraded_transitions
                .with_label_values(&["degraded"])
                .inc();
            tracing::warn!(
                unreachable_ms = now.saturating_duration_since(last_answer).as_millis() as u64,
                "cluster degraded: Redis is unreachable; every topic is served by this sidecar alone (its own poller, a local epoch), pushes answer 503 until Redis is back"
            );
        }
    }
}

/// What this sidecar last published as lease holder, and when its hold ended: a source that
/// starts alone right after resumes from it (the backend stream's `Last-Event-ID`).
#[derive(Default)]
pub struct LastHeld {
    continuity: Continuity,
    ended: Option<Instant>,
}

#[derive(Default)]
pub struct LastHeldSlot(Mutex<LastHeld>);

impl LastHeldSlot {
    pub fn published(&self, continuity: &Continuity) {
        self.lock().continuity = continuity.clone();
    }

    /// What the holder last published (or started from).
    pub fn continuity(&self) -> Continuity {
        self.lock().continuity.clone()
    }

    pub fn hold_ended(&self) {
        self.lock().ended = Some(Instant::now());
    }

    /// The holder's continuity when its hold ended within `recent` (so nobody else can have
    /// published since), else nothing.
    fn recent(&self, recent: Duration) -> Continuity {
        let last = self.lock();
        match last.ended {
            Some(ended) if ended.elapsed() <= recent => last.continuity.clone(),
            _ => Continuity::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LastHeld> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LeasedSource {
    /// Runs the topic's source alone while the cluster is degraded; returns when Redis is
    /// back (the follower then rejoins the shared history) or the instance stops.
    pub(super) async fn serve_alone(&self, health: &mut watch::Receiver<bool>) {
        let settings = &self.cluster.settings;
        while !self.stop.is_cancelled() && *health.borrow_and_update() {
            // Checked again under the topic's lock: the follower may have rejoined the shared
            // history since the check above.
            let Some(epoch) = self.topic.serve_alone(|| self.cluster.health.is_degraded()) else {
                break;
            };
            tracing::info!(topic = %self.topic.key(), %epoch, "serving the topic alone while Redis is unreachable");
            let alone = self.stop.child_token();
            let sink = Arc::new(AloneSink {
                topic: self.topic.clone(),
                epoch,
                refused: alone.clone(),
            });
            let start = SourceStart {
                sink,
                resume: self.resume_alone(settings.fallback_after + settings.lease_ttl),
                // As on a single sidecar: polled while local clients hold it.
                on_timer: false,
            };
            let task = self
                .launcher
                .spawn_source(self.topic.clone(), alone.clone(), start);
            tokio::select! {
                // Refused: the history rejoined the shared log in between; start over.
                _ = alone.cancelled() => {}
                _ = health.wait_for(|degraded| !*degraded) => {}
            }
            alone.cancel();
            if let Some(task) = task {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
        }
    }

    /// Where a source serving alone starts: the content hash of what clients here last got
    /// (an unchanged backend adds nothing), and the backend stream's position when this
    /// sidecar held the lease until just now.
    fn resume_alone(&self, recent: Duration) -> Continuity {
        let mut continuity = self.last_held.recent(recent);
        continuity.etag = None;
        continuity.last_modified = None;
        let ignore = self
            .launcher
            .spec(&self.topic.key().name)
            .map_or_else(|| Arc::from(Vec::new()), |spec| spec.ignore_fields);
        continuity.content_hash = self
            .topic
            .latest()
            .and_then(|message| state_hash(message.content_type.as_deref(), &message.data, &ignore).ok());
        continuity
    }
}

/// A source serving alone publishes into the local topic under its own epoch only.
struct AloneSink {
    topic: Arc<Topic>,
    epoch: Epoch,
    refused: CancellationToken,
}

#[async_trait]
impl Sink for AloneSink {
    fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    async fn publish(&self, payload: Payload, _: Option<String>, _: &Continuity) -> Result<(), SinkError> {
        match self.topic.publish_in(self.epoch, payload) {
            Some(_) => Ok(()),
            None => {
                self.refused.cancel();
                Err(SinkError::Fenced)
            }
        }
    }
}
