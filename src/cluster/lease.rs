//! Exactly one poller per topic instance, cluster-wide: a lease in Redis (`SET NX PX`),
//! contested only by sidecars where the instance lives (local clients, or an eager topic).
//! The holder runs the source; every held lease is renewed in one pipelined batch per
//! `lease_renew_ms`. A holder whose renewals stop succeeding stops on its own once its local
//! deadline (last successful renewal sent + 0.8 × TTL) passes — before anyone else can take
//! the lease — and the publish script's fence stops one that was paused past it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fallback::LastHeldSlot;
use super::keys::InstanceKeys;
use super::store::{PublishOutcome, Publisher};
use super::Cluster;
use crate::hub::{Payload, Topic};
use crate::metrics::METRICS;
use crate::upstream::backoff::Backoff;
use crate::upstream::sink::{Continuity, Sink, SinkError};
use crate::upstream::{SourceLauncher, SourceStart};

struct Held {
    holder: String,
    /// Cancelled when the lease is lost: the source stops.
    lost: CancellationToken,
    /// When the last renewal that succeeded was sent.
    renewed_at: Instant,
}

/// Every lease this sidecar holds.
#[derive(Default)]
pub struct Leases(Mutex<HashMap<String, Held>>);

impl Leases {
    fn insert(&self, key: &str, holder: &str, lost: CancellationToken, at: Instant) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(
            key.to_string(),
            Held {
                holder: holder.to_string(),
                lost,
                renewed_at: at,
            },
        );
        METRICS.cluster_leases_held.inc();
    }

    /// Whether this sidecar holds the lease `key` now, and under which holder name.
    pub fn holder(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|held| held.holder.clone())
    }

    fn remove(&self, key: &str) {
        if self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some()
        {
            METRICS.cluster_leases_held.dec();
        }
    }

    /// Renews every held lease every `cluster.lease_renew` until `shutdown`.
    pub async fn run_renewals(cluster: Arc<Cluster>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(cluster.settings.lease_renew);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ttl = cluster.settings.lease_ttl;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let batch: Vec<(String, String)> = cluster
                .leases
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(key, held)| (key.clone(), held.holder.clone()))
                .collect();
            let now = Instant::now();
            let renewed = if batch.is_empty() {
                Ok(Vec::new())
            } else {
                cluster.store.renew(&batch, ttl).await
            };
            let mut leases = cluster.leases.0.lock().unwrap_or_else(PoisonError::into_inner);
            match renewed {
                Ok(results) => {
                    for ((key, _), still_ours) in batch.iter().zip(results) {
                        let Some(held) = leases.get_mut(key) else { continue };
                        if still_ours {
                            held.renewed_at = now;
                        } else {
                            tracing::info!(lease = %key, "lease lost; another sidecar polls this topic now");
                            held.lost.cancel();
                        }
                    }
                }
                Err(error) => tracing::warn!("cannot renew leases: {error}"),
            }
            // Stop before the TTL can have run out in Redis (clocks run at the same rate; the
            // TTL started no earlier than the renewal was sent).
            let deadline = ttl.mul_f64(0.8);
            for (key, held) in leases.iter() {
                if now.saturating_duration_since(held.renewed_at) >= deadline && !held.lost.is_cancelled() {
                    tracing::warn!(lease = %key, "lease not renewed in time; stopping this poller");
                    held.lost.cancel();
                }
            }
        }
    }
}

/// Contends for one topic instance's lease while it lives here, and runs its source while
/// holding it.
pub struct LeasedSource {
    pub cluster: Arc<Cluster>,
    pub launcher: Arc<SourceLauncher>,
    pub topic: Arc<Topic>,
    pub keys: InstanceKeys,
    pub stop: CancellationToken,
    pub last_held: Arc<LastHeldSlot>,
}

impl LeasedSource {
    pub async fn run(self) {
        let settings = &self.cluster.settings;
        let mut backoff = Backoff::new(settings.lease_renew, settings.lease_ttl);
        let mut health = self.cluster.health.watch();
        // Wait for the follower's first sync so a holder's first publish follows the history.
        self.topic.wait_synced(settings.lease_ttl).await;
        loop {
            if *health.borrow_and_update() {
                self.serve_alone(&mut health).await;
                if self.stop.is_cancelled() {
                    break;
                }
                backoff.reset();
            }
            let holder = format!("{}:{:08x}", settings.instance_id, rand::random::<u32>());
            let sent = Instant::now();
            let acquired = tokio::select! {
                _ = self.stop.cancelled() => break,
                acquired = self.cluster.store.acquire(&self.keys, &holder, settings.lease_ttl) => acquired,
            };
            let delay = match acquired {
                Ok(Some(continuity)) => {
                    backoff.reset();
                    self.hold(&holder, sent, continuity, &mut health).await;
                    if self.stop.is_cancelled() {
                        break;
                    }
                    settings.lease_renew
                }
                Ok(None) => backoff_free(settings.lease_renew),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(topic = %self.topic.key(), "cannot contend for the lease: {error}");
                    delay
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = health.wait_for(|degraded| *degraded) => {}
            }
        }
    }

    async fn hold(
        &self,
        holder: &str,
        sent: Instant,
        continuity: Continuity,
        health: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        tracing::info!(topic = %self.topic.key(), "lease acquired: this sidecar polls the topic");
        let lost = self.stop.child_token();
        self.cluster
            .leases
            .insert(&self.keys.lease, holder, lost.clone(), sent);
        let sink = Arc::new(ClusterSink {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
            keys: self.keys.clone(),
            holder: holder.to_string(),
            lost: lost.clone(),
            announced_stale: Mutex::new(false),
            last_held: self.last_held.clone(),
        });
        self.last_held.published(&continuity);
        let mut epochs = self.topic.watch_shared_epoch();
        epochs.borrow_and_update();
        let mut resume = continuity;
        loop {
            let run = lost.child_token();
            let start = SourceStart {
                sink: sink.clone(),
                resume,
                on_timer: true,
            };
            let task = self.launcher.spawn_source(self.topic.clone(), run.clone(), start);
            let start_over = tokio::select! {
                _ = lost.cancelled() => false,
                // Renewals fail long before this; it only bounds a hold on a Redis that
                // answers renewals but nothing else.
                _ = health.wait_for(|degraded| *degraded) => {
                    lost.cancel();
                    false
                }
                // Redis lost the history (a restart, even with its AOF and this lease in it):
                // the new epoch starts empty, and a poller that goes on with its last content
                // hash would find the backend "unchanged" and never give it the current state.
                changed = epochs.changed() => changed.is_ok(),
            };
            run.cancel();
            if let Some(task) = task {
                // The source ends at its next await point once `run` fires.
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            if !start_over || lost.is_cancelled() {
                break;
            }
            tracing::info!(topic = %self.topic.key(), "the shared history has a new epoch; the source starts over to publish the current state into it");
            // The backend stream goes on from the last event published (its clients were told
            // `reset`); a poll forgets what it saw.
            resume = Continuity {
                last_event_id: self.last_held.continuity().last_event_id,
                ..Continuity::default()
            };
        }
        self.cluster.leases.remove(&self.keys.lease);
        self.last_held.hold_ended();
        if self.stop.is_cancelled() {
            // Released at once, so a standby takes over without waiting for the TTL.
            if let Err(error) = self.cluster.store.release(&self.keys, holder).await {
                tracing::debug!(topic = %self.topic.key(), "cannot release the lease (it expires): {error}");
            }
        }
    }
}

/// A standby retries at the renewal period, jittered so standbys do not ask in step.
fn backoff_free(period: Duration) -> Duration {
    period.mul_f64(rand::random_range(0.5..1.0))
}

/// The holder's sink: publishes through the fenced script.
struct ClusterSink {
    cluster: Arc<Cluster>,
    topic: Arc<Topic>,
    keys: InstanceKeys,
    holder: String,
    lost: CancellationToken,
    announced_stale: Mutex<bool>,
    last_held: Arc<LastHeldSlot>,
}

impl ClusterSink {
    fn announce(&self, stale: Option<String>) {
        {
            let mut announced = self
                .announced_stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *announced == stale.is_some() {
                return;
            }
            *announced = stale.is_some();
        }
        let cluster = self.cluster.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            if let Err(error) = cluster.store.announce_health(&keys, stale.as_deref()).await {
                tracing::debug!("cannot announce the upstream health: {error}");
            }
        });
    }
}

#[async_trait]
impl Sink for ClusterSink {
    fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    async fn publish(
        &self,
        payload: Payload,
        version: Option<String>,
        continuity: &Continuity,
    ) -> Result<(), SinkError> {
        let from = Publisher::Holder {
            holder: &self.holder,
            version: version.as_deref(),
            continuity,
        };
        let max_messages = self.topic.settings().history.max_messages;
        match self
            .cluster
            .store
            .publish(&self.keys, max_messages, &payload, from)
            .await
        {
            Ok(PublishOutcome::Published(_) | PublishOutcome::Duplicate(_)) => {
                self.last_held.published(continuity);
                Ok(())
            }
            Ok(PublishOutcome::Fenced) => {
                tracing::warn!(topic = %self.topic.key(), "publish fenced: the lease moved to another sidecar");
                self.lost.cancel();
                Err(SinkError::Fenced)
            }
            Err(error) => Err(SinkError::Unavailable(error.to_string())),
        }
    }

    fn healthy(&self) {
        self.topic.record_upstream_success();
        self.announce(None);
    }

    fn failing(&self, reason: String) {
        self.topic.record_upstream_failure(reason.clone());
        self.announce(Some(reason));
    }
}
