//! The Pub/Sub side: one RESP3 connection per sidecar, subscribed to the channel of every
//! topic instance it follows. Incoming messages are routed to each instance's follower
//! through a bounded queue; when one is full (or the connection dropped) the follower is
//! marked dirty and repairs from the stream instead, so intake never blocks and never grows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Notify};

use crate::metrics::METRICS;

/// "Something may have been missed": set by intake, cleared by the follower's catch-up.
#[derive(Debug, Default)]
pub struct Dirty {
    flag: AtomicBool,
    pub wake: Notify,
}

impl Dirty {
    pub fn mark(&self) {
        self.flag.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Clears the flag, returning whether it was set.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }
}

struct Route {
    intake: mpsc::Sender<Bytes>,
    dirty: Arc<Dirty>,
}

#[derive(Default)]
pub struct Routes(RwLock<HashMap<String, Route>>);

impl Routes {
    /// Called by the connection for every push: must not block.
    pub fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let [channel, message] = push.data.as_slice() else {
                    return;
                };
                let (Value::BulkString(channel), Value::BulkString(message)) = (channel, message) else {
                    return;
                };
                let Ok(channel) = std::str::from_utf8(channel) else {
                    return;
                };
                let routes = self.0.read().unwrap_or_else(PoisonError::into_inner);
                if let Some(route) = routes.get(channel) {
                    // Full: drop it and let the follower fetch what it missed from the stream.
                    if route.intake.try_send(Bytes::copy_from_slice(message)).is_err() {
                        route.dirty.mark();
                    }
                }
            }
            PushKind::Disconnection => {
                METRICS
                    .cluster_redis_connected
                    .with_label_values(&["pubsub"])
                    .set(0);
                tracing::warn!(
                    "the Redis Pub/Sub connection dropped; followers will catch up from the streams"
                );
                self.mark_all_dirty();
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                METRICS
                    .cluster_redis_connected
                    .with_label_values(&["pubsub"])
                    .set(1);
            }
            _ => {}
        }
    }
}

impl Routes {
    /// Every follower catches up from its stream (something may have been missed).
    pub fn mark_all_dirty(&self) {
        for route in self.0.read().unwrap_or_else(PoisonError::into_inner).values() {
            route.dirty.mark();
        }
    }
}

pub struct Bus {
    pub routes: Arc<Routes>,
    pub connection: ConnectionManager,
}

impl Bus {
    /// Routes `channel` to `intake` and subscribes to it. The route is in place before the
    /// SUBSCRIBE is sent, so nothing that arrives after the confirmation is lost.
    pub async fn subscribe(
        &self,
        channel: &str,
        intake: mpsc::Sender<Bytes>,
        dirty: Arc<Dirty>,
    ) -> Result<(), redis::RedisError> {
        self.routes
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.to_string(), Route { intake, dirty });
        let result = self.connection.clone().subscribe(channel).await;
        if result.is_err() {
            METRICS
                .cluster_redis_errors
                .with_label_values(&["subscribe"])
                .inc();
        }
        result
    }

    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<redis::Value>(&mut self.connection.clone())
            .await
            .map(drop)
    }

    pub async fn unsubscribe(&self, channel: &str) {
        self.routes
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(channel);
        if let Err(error) = self.connection.clone().unsubscribe(channel).await {
            tracing::debug!(
                channel,
                "unsubscribe failed (the connection resubscribes only routed channels): {error}"
            );
        }
    }
}
