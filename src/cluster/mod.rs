//! `[cluster]`: several sidecars behaving as one on Redis (`../shared/scaleout.md`).
//!
//! Redis is the sequencer, the history and the bus; each sidecar keeps its local ring and
//! fan-out as a cache fed from Redis:
//!
//! ```text
//! lease holder's source ─┐                  ┌─▶ follower (sidecar A) ─▶ topic ─▶ clients
//!   (fenced publish)     ├─▶ publish script ┼─▶ follower (sidecar B) ─▶ topic ─▶ clients
//! POST /publish on any ──┘   seq, stream,   └─▶ follower (sidecar C) ─▶ topic ─▶ clients
//!   (Idempotency-Key)        PUBLISH
//! ```
//!
//! - [`keys`]: key names, hash-tagged per topic instance.
//! - [`scripts`] / [`store`]: the Lua scripts and their typed calls.
//! - [`bus`]: the Pub/Sub connection and its bounded per-instance intake.
//! - [`follower`]: history sync, ordering, gap repair, per instance.
//! - [`lease`]: one poller per instance cluster-wide, batched renewals, the fenced sink.
//! - [`fallback`]: Redis gone — each sidecar serves its topics alone until it is back.
//!
//! All of it runs on one small runtime of its own, so Redis work never competes with, and
//! never depends on, pingora's per-service runtimes.

pub mod bus;
pub mod fallback;
pub mod follower;
pub mod keys;
pub mod lease;
pub mod scripts;
pub mod store;

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::cluster::ClusterSettings;
use crate::config::SourceSpec;
use crate::hub::{Payload, Published, Topic, TopicKey, UpstreamLauncher};
use crate::upstream::SourceLauncher;
use keys::InstanceKeys;
use store::{PublishOutcome, Publisher, Store};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid [cluster] redis_url: {0}")]
    Url(String),
    #[error("cannot start the cluster runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot set up the Redis connection: {0}")]
    Redis(String),
}

pub struct Cluster {
    pub settings: ClusterSettings,
    pub store: Store,
    pub bus: bus::Bus,
    pub leases: lease::Leases,
    pub health: fallback::Health,
    runtime: tokio::runtime::Handle,
}

/// The longest the admin API waits for the lease holders of one page.
pub const LEASE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps the cluster's runtime alive; dropping it stops every cluster task.
pub struct ClusterRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

impl Cluster {
    /// Sets up the connections (lazily: a Redis that is down at start is retried, never
    /// fatal) and the lease renewal task, which stops with `shutdown`.
    pub fn start(
        settings: ClusterSettings,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Cluster>, ClusterRuntime), ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sidestream-cluster")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let info = connection_info(&settings)?;
        let commands_client =
            redis::Client::open(info.clone()).map_err(|e| ClusterError::Redis(e.to_string()))?;
        let pubsub_info = {
            let redis = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            info.set_redis_settings(redis)
        };
        let pubsub_client =
            redis::Client::open(pubsub_info).map_err(|e| ClusterError::Redis(e.to_string()))?;
        let routes = Arc::new(bus::Routes::default());
        let (commands, pubsub) = {
            let _entered = runtime.enter();
            let base = || {
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.redis_timeout))
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_max_delay(std::time::Duration::from_secs(2))
            };
            let commands = ConnectionManager::new_lazy_with_config(commands_client, base())
                .map_err(|e| ClusterError::Redis(e.to_string()))?;
            let sink_routes = routes.clone();
            let pubsub = ConnectionManager::new_lazy_with_config(
                pubsub_client,
                base()
                    // Subscriptions are not request/response: no timeout on the connection's
                    // reads, only on (un)subscribe replies, which redis-rs bounds itself.
                    .set_push_sender(move |push| {
                        sink_routes.on_push(push);
                        Ok::<(), std::convert::Infallible>(())
                    })
                    .set_automatic_resubscription(),
            )
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
            (commands, pubsub)
        };
        let cluster = Arc::new(Cluster {
            store: Store {
                connection: commands,
                history_ttl: settings.history_ttl,
                idempotency_window: settings.idempotency_window,
            },
            bus: bus::Bus {
                routes,
                connection: pubsub,
            },
            leases: lease::Leases::default(),
            health: fallback::Health::default(),
            runtime: runtime.handle().clone(),
            settings,
        });
        runtime.spawn(lease::Leases::run_renewals(cluster.clone(), shutdown.clone()));
        runtime.spawn(fallback::watch_redis(cluster.clone(), shutdown));
        tracing::info!(instance = %cluster.settings.instance_id, "cluster mode: topics are shared through Redis");
        Ok((cluster, ClusterRuntime(Some(runtime))))
    }

    pub fn keys(&self, key: &TopicKey) -> InstanceKeys {
        InstanceKeys::new(&self.settings.key_prefix, key)
    }

    /// Who holds the poller lease of each of these instances, cluster-wide (the admin API
    /// asks for one page of instances at a time). `None` when Redis cannot say within
    /// [`LEASE_LOOKUP_TIMEOUT`], or the cluster is degraded.
    pub async fn lease_holders(&self, instances: &[TopicKey]) -> Option<Vec<Option<String>>> {
        if self.health.is_degraded() {
            return None;
        }
        let keys: Vec<String> = instances.iter().map(|key| self.keys(key).lease).collect();
        tokio::time::timeout(LEASE_LOOKUP_TIMEOUT, self.store.lease_holders(&keys))
            .await
            .ok()?
            .ok()
    }

    /// A push published on any sidecar: sequenced in Redis, delivered by every follower.
    pub async fn publish_push(
        &self,
        key: &TopicKey,
        max_messages: usize,
        payload: &Payload,
        idempotency_key: Option<&str>,
    ) -> Result<Published, store::StoreError> {
        if self.health.is_degraded() {
            return Err(store::StoreError::Degraded);
        }
        let keys = self.keys(key);
        let outcome = self
            .store
            .publish(&keys, max_messages, payload, Publisher::Push { idempotency_key })
            .await?;
        match outcome {
            PublishOutcome::Published(cursor) => Ok(Published {
                cursor,
                duplicate: false,
            }),
            PublishOutcome::Duplicate(cursor) => Ok(Published {
                cursor,
                duplicate: true,
            }),
            PublishOutcome::Fenced => Err(store::StoreError::Unexpected("publish (a push is never fenced)")),
        }
    }
}

/// The URL, with `redis_password` applied.
fn connection_info(settings: &ClusterSettings) -> Result<redis::ConnectionInfo, ClusterError> {
    use redis::IntoConnectionInfo;
    let info = settings
        .redis_url
        .expose()
        .into_connection_info()
        // The error text of the crate may quote the URL: say only what kind of problem it is.
        .map_err(|e| ClusterError::Url(format!("{:?}", e.kind())))?;
    Ok(match &settings.redis_password {
        Some(password) => {
            let redis = info.redis_settings().clone().set_password(password.expose());
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

/// The registry's launcher in cluster mode: every instance gets a follower; poll and stream
/// instances also contend for the lease and run their source while holding it.
pub struct ClusterLauncher {
    pub cluster: Arc<Cluster>,
    pub sources: Arc<SourceLauncher>,
}

impl UpstreamLauncher for ClusterLauncher {
    fn launch(&self, topic: Arc<Topic>, stop: CancellationToken) {
        let keys = self.cluster.keys(topic.key());
        let needs_lease = self
            .sources
            .spec(&topic.key().name)
            .is_some_and(|spec| !matches!(spec.source, SourceSpec::Push));
        if needs_lease {
            self.cluster.runtime.spawn(
                lease::LeasedSource {
                    cluster: self.cluster.clone(),
                    launcher: self.sources.clone(),
                    topic: topic.clone(),
                    keys: keys.clone(),
                    stop: stop.clone(),
                    last_held: Default::default(),
                }
                .run(),
            );
        }
        self.cluster.runtime.spawn(
            follower::Follower {
                cluster: self.cluster.clone(),
                topic,
                keys,
                stop,
            }
            .run(),
        );
    }

    fn follows_shared_log(&self) -> bool {
        true
    }
}
