//! All live topic instances: created on first use, reaped after their idle linger.
//!
//! This is also the seam "who may run a topic's upstream task": the registry asks its
//! [`UpstreamLauncher`] to start one when an instance is created and cancels it when the
//! instance is reaped. With `[cluster]` the launcher starts a follower of the shared history
//! and contends for the instance's lease, running the source only while it holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::topic::{Topic, TopicKey, TopicSettings};

/// Starts the upstream task of a new topic instance. The task must end when `stop` is
/// cancelled.
pub trait UpstreamLauncher: Send + Sync {
    fn launch(&self, topic: Arc<Topic>, stop: CancellationToken);

    /// `true` when instances follow a shared log (a cluster): each new instance waits for
    /// its first sync before it answers anyone.
    fn follows_shared_log(&self) -> bool {
        false
    }
}

struct Entry {
    topic: Arc<Topic>,
    stop: CancellationToken,
    /// Eager instances stay even without clients.
    pinned: bool,
}

pub struct Registry {
    topics: Mutex<HashMap<TopicKey, Entry>>,
    launcher: Arc<dyn UpstreamLauncher>,
    shutdown: CancellationToken,
}

impl Registry {
    /// `shutdown` stops every upstream task (each is a child of it) and the reaper. The app
    /// fires it at the end of the drain, not at its start, so draining streams stay fresh.
    pub fn new(launcher: Arc<dyn UpstreamLauncher>, shutdown: CancellationToken) -> Self {
        Registry {
            topics: Mutex::new(HashMap::new()),
            launcher,
            shutdown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicKey, Entry>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The instance for `key`, creating it (and starting its upstream) if needed. Marks it
    /// active, so the reaper leaves it alone for at least one linger period.
    pub fn get_or_create(&self, key: &TopicKey, settings: impl FnOnce() -> TopicSettings) -> Arc<Topic> {
        self.create(key, settings, false)
    }

    fn create(&self, key: &TopicKey, settings: impl FnOnce() -> TopicSettings, pinned: bool) -> Arc<Topic> {
        let mut topics = self.lock();
        if let Some(entry) = topics.get(key) {
            entry.topic.touch();
            return entry.topic.clone();
        }
        let topic = Topic::new(key.clone(), settings());
        if self.launcher.follows_shared_log() {
            topic.expect_sync();
        }
        if pinned {
            // Before launch: the upstream task reads it to choose its schedule.
            topic.pin();
        }
        let stop = self.shutdown.child_token();
        topics.insert(
            key.clone(),
            Entry {
                topic: topic.clone(),
                stop: stop.clone(),
                pinned: false,
            },
        );
        drop(topics);
        tracing::debug!(topic = %key, "topic instance created");
        self.launcher.launch(topic.clone(), stop);
        topic
    }

    /// Like [`Registry::get_or_create`], unless that would make more than `max_instances`
    /// live instances: then `None`, so clients varying path variables cannot create
    /// unbounded upstream pollers. Existing instances are always returned.
    pub fn try_get_or_create(
        &self,
        key: &TopicKey,
        max_instances: usize,
        settings: impl FnOnce() -> TopicSettings,
    ) -> Option<Arc<Topic>> {
        {
            let topics = self.lock();
            if let Some(entry) = topics.get(key) {
                entry.topic.touch();
                return Some(entry.topic.clone());
            }
            if topics.len() >= max_instances {
                return None;
            }
        }
        // Two racing creators may both pass the check: the cap can be exceeded by at most
        // the number of worker threads, which keeps it a bound.
        Some(self.get_or_create(key, settings))
    }

    /// Like [`Registry::get_or_create`], and the instance is never reaped for being idle.
    pub fn get_or_create_pinned(
        &self,
        key: &TopicKey,
        settings: impl FnOnce() -> TopicSettings,
    ) -> Arc<Topic> {
        let topic = self.create(key, settings, true);
        topic.pin();
        if let Some(entry) = self.lock().get_mut(key) {
            entry.pinned = true;
        }
        topic
    }

    pub fn get(&self, key: &TopicKey) -> Option<Arc<Topic>> {
        self.lock().get(key).map(|entry| entry.topic.clone())
    }

    /// Every live instance, for metrics and admin.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.lock().values().map(|entry| entry.topic.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes instances idle for at least their linger; stops their upstream tasks.
    pub fn reap(&self, now: Instant) -> usize {
        let mut topics = self.lock();
        let idle: Vec<TopicKey> = topics
            .iter()
            .filter(|(_, entry)| {
                !entry.pinned
                    && entry
                        .topic
                        .idle_for(now)
                        .is_some_and(|idle| idle >= entry.topic.settings().idle_linger)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &idle {
            if let Some(entry) = topics.remove(key) {
                entry.stop.cancel();
                entry.topic.close();
                tracing::debug!(topic = %key, "idle topic instance reaped");
            }
        }
        idle.len()
    }

    /// Reaps every `period` until shutdown.
    pub async fn run_reaper(&self, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = ticks.tick() => { self.reap(Instant::now()); }
            }
        }
        // Subscriptions are not ended here: during a drain each transport ends its own
        // clients on its own schedule; the app closes what is left when the server stops.
    }

    /// Removes every instance of the topic `name` (a reload removed or changed it): their
    /// upstreams stop and their clients are told to go away (and reconnect).
    pub fn close_topic(&self, name: &str) -> usize {
        let mut topics = self.lock();
        let keys: Vec<TopicKey> = topics.keys().filter(|k| &*k.name == name).cloned().collect();
        for key in &keys {
            if let Some(entry) = topics.remove(key) {
                entry.stop.cancel();
                entry.topic.close();
            }
        }
        keys.len()
    }

    /// Removes one instance (the admin API's `DELETE`), as [`Registry::close_topic`] does for
    /// a reload: its upstream stops and its clients are told to reconnect, which creates it
    /// anew. `false` when there was no such instance.
    pub fn close_instance(&self, key: &TopicKey) -> bool {
        let Some(entry) = self.lock().remove(key) else {
            return false;
        };
        entry.stop.cancel();
        entry.topic.close();
        true
    }

    /// Stops every upstream task and ends every subscription.
    pub fn close_all(&self) {
        for (_, entry) in self.lock().drain() {
            entry.stop.cancel();
            entry.topic.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::history::HistoryLimits;
    use crate::hub::subscriber::{OverflowPolicy, QueueLimits};
    use crate::hub::topic::{Mode, Resume};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts launches and how many launched tasks are still running.
    #[derive(Default)]
    struct CountingLauncher {
        launched: AtomicUsize,
        running: Arc<AtomicUsize>,
    }

    impl UpstreamLauncher for CountingLauncher {
        fn launch(&self, _topic: Arc<Topic>, stop: CancellationToken) {
            self.launched.fetch_add(1, Ordering::SeqCst);
            self.running.fetch_add(1, Ordering::SeqCst);
            let running = self.running.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    fn settings() -> TopicSettings {
        TopicSettings {
            mode: Mode::State,
            history: HistoryLimits {
                max_messages: 4,
                max_bytes: 1 << 20,
            },
            queue: QueueLimits {
                max_messages: 4,
                max_bytes: 1 << 20,
            },
            on_full: OverflowPolicy::Conflate,
            deltas: false,
            idle_linger: Duration::from_secs(10),
        }
    }

    fn key(param: &str) -> TopicKey {
        TopicKey::new("prices", vec![param.to_string()])
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_upstream_per_instance_and_reaped_after_linger() {
        let launcher = Arc::new(CountingLauncher::default());
        let shutdown = CancellationToken::new();
        let registry = Arc::new(Registry::new(launcher.clone(), shutdown.clone()));
        let reaper = tokio::spawn({
            let registry = registry.clone();
            async move { registry.run_reaper(Duration::from_secs(1)).await }
        });

        let subscriptions: Vec<_> = (0..100)
            .map(|_| {
                registry
                    .get_or_create(&key("AAPL"), settings)
                    .subscribe(Resume::Latest)
            })
            .collect();
        registry.get_or_create(&key("MSFT"), settings);
        assert_eq!(launcher.launched.load(Ordering::SeqCst), 2);
        assert_eq!(registry.len(), 2);

        // MSFT has no subscriber: gone after its linger. AAPL stays while subscribed.
        tokio::time::sleep(Duration::from_secs(12)).await;
        settle().await;
        assert_eq!(registry.len(), 1);
        assert_eq!(launcher.running.load(Ordering::SeqCst), 1);

        drop(subscriptions);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(registry.len(), 1, "still lingering");
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle().await;
        assert!(registry.is_empty());
        assert_eq!(launcher.running.load(Ordering::SeqCst), 0);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), reaper)
            .await
            .expect("reaper stops on shutdown")
            .expect("reaper ok");
    }

    #[tokio::test(start_paused = true)]
    async fn instance_cap_refuses_new_instances_only() {
        let launcher = Arc::new(CountingLauncher::default());
        let shutdown = CancellationToken::new();
        let registry = Registry::new(launcher.clone(), shutdown.clone());
        for n in 0..10_000 {
            let _ = registry.try_get_or_create(&key(&format!("S{n}")), 3, settings);
        }
        assert_eq!(registry.len(), 3);
        assert_eq!(
            launcher.launched.load(Ordering::SeqCst),
            3,
            "one upstream per admitted instance"
        );
        assert!(
            registry.try_get_or_create(&key("S0"), 3, settings).is_some(),
            "an existing instance is still served at the cap"
        );
        assert!(registry.try_get_or_create(&key("new"), 3, settings).is_none());
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_upstream() {
        let launcher = Arc::new(CountingLauncher::default());
        let shutdown = CancellationToken::new();
        let registry = Registry::new(launcher.clone(), shutdown.clone());
        let topic = registry.get_or_create(&key("A"), settings);
        let subscribed = topic.subscribe(Resume::Latest);
        shutdown.cancel();
        registry.close_all();
        settle().await;
        assert_eq!(launcher.running.load(Ordering::SeqCst), 0);
        assert!(matches!(
            subscribed.subscription.recv().await,
            crate::hub::subscriber::Delivery::Closed(_)
        ));
    }
}
