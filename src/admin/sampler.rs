//! Per-second rates for the admin API: samples every live instance's totals once a second
//! and keeps the last [`HISTORY_SAMPLES`] deliveries/s of each (the page's sparklines).
//! Bounded: one entry per live instance (the registry bounds those), forgotten with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Registry, Topic, TopicKey};

/// Samples kept per instance: one minute at one per second.
pub const HISTORY_SAMPLES: usize = 60;
const PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Track {
    at: Option<Instant>,
    published: u64,
    deliveries: u64,
    published_per_second: f64,
    deliveries_per_second: f64,
    /// Deliveries/s, oldest first; full at [`HISTORY_SAMPLES`] (the oldest goes first).
    history: VecDeque<f64>,
}

/// What the API shows of one instance's rates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub published_per_second: f64,
    pub deliveries_per_second: f64,
    pub deliveries_history: Vec<f64>,
}

#[derive(Default)]
pub struct Sampler {
    tracks: Mutex<HashMap<TopicKey, Track>>,
}

impl Sampler {
    fn lock(&self) -> MutexGuard<'_, HashMap<TopicKey, Track>> {
        self.tracks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample of every instance in `topics`; instances not in it are forgotten.
    pub fn sample(&self, topics: &[Arc<Topic>]) {
        let now = Instant::now();
        let mut tracks = self.lock();
        let mut seen: HashMap<TopicKey, Track> = HashMap::with_capacity(topics.len());
        for topic in topics {
            let mut track = tracks.remove(topic.key()).unwrap_or_default();
            let published = topic.counters.published.load(Ordering::Relaxed);
            let deliveries = topic.stats().deliveries();
            if let Some(at) = track.at {
                let seconds = now.saturating_duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    track.published_per_second = published.saturating_sub(track.published) as f64 / seconds;
                    track.deliveries_per_second =
                        deliveries.saturating_sub(track.deliveries) as f64 / seconds;
                    if track.history.len() == HISTORY_SAMPLES {
                        track.history.pop_front();
                    }
                    track.history.push_back(track.deliveries_per_second);
                }
            }
            track.at = Some(now);
            track.published = published;
            track.deliveries = deliveries;
            seen.insert(topic.key().clone(), track);
        }
        *tracks = seen;
    }

    pub fn rates(&self, key: &TopicKey) -> Rates {
        self.lock().get(key).map_or_else(Rates::default, |track| Rates {
            published_per_second: track.published_per_second,
            deliveries_per_second: track.deliveries_per_second,
            deliveries_history: track.history.iter().copied().collect(),
        })
    }

    /// Samples every second until `shutdown`.
    pub async fn run(&self, registry: &Registry, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => self.sample(&registry.topics()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::history::HistoryLimits;
    use crate::hub::subscriber::{OverflowPolicy, QueueLimits};
    use crate::hub::{Mode, Payload, TopicSettings};

    fn topic(name: &str) -> Arc<Topic> {
        Topic::new(
            TopicKey::new(name, Vec::new()),
            TopicSettings {
                mode: Mode::Events,
                history: HistoryLimits {
                    max_messages: 8,
                    max_bytes: 1 << 16,
                },
                queue: QueueLimits {
                    max_messages: 8,
                    max_bytes: 1 << 16,
                },
                on_full: OverflowPolicy::DropOldest,
                deltas: false,
                idle_linger: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn rates_per_second_and_a_bounded_history() {
        let sampler = Sampler::default();
        let prices = topic("prices");
        sampler.sample(std::slice::from_ref(&prices));
        for second in 0..(HISTORY_SAMPLES + 5) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            prices.publish(Payload::default());
            prices.stats().delivered(10 + second as u64);
            sampler.sample(std::slice::from_ref(&prices));
        }
        let rates = sampler.rates(prices.key());
        assert_eq!(rates.published_per_second, 0.5);
        let last = (10 + HISTORY_SAMPLES + 4) as f64 / 2.0;
        assert_eq!(rates.deliveries_per_second, last);
        assert_eq!(rates.deliveries_history.len(), HISTORY_SAMPLES);
        assert_eq!(rates.deliveries_history.last(), Some(&last));
        // An instance that is gone is forgotten.
        sampler.sample(&[]);
        assert_eq!(sampler.rates(prices.key()), Rates::default());
    }
}
