//! `/metrics`: refreshes the gauges that are read off the hub, then renders every metric.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use http::Response;

use super::reply;
use crate::hub::Registry;
use crate::metrics::METRICS;

/// Per topic name, over its live instances.
#[derive(Default)]
struct Freshness {
    oldest_state: f64,
    requests: u64,
    published: u64,
}

pub fn render(registry: &Registry) -> Response<Vec<u8>> {
    let topics = registry.topics();
    METRICS
        .topic_instances
        .set(i64::try_from(topics.len()).unwrap_or(i64::MAX));
    let mut per_topic: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut freshness: BTreeMap<&str, Freshness> = BTreeMap::new();
    for topic in &topics {
        let entry = per_topic.entry(&topic.key().name).or_default();
        entry.0 += i64::from(topic.is_stale());
        entry.1 += i64::try_from(topic.queue_depth().bytes).unwrap_or(i64::MAX);
        let fresh = freshness.entry(&topic.key().name).or_default();
        if let Some(latest) = topic.latest() {
            fresh.oldest_state = fresh.oldest_state.max(latest.received.elapsed().as_secs_f64());
        }
        fresh.requests += topic.stats().upstream().requests;
        fresh.published += topic.counters.published.load(Ordering::Relaxed);
    }
    METRICS.latest_state_age.reset();
    METRICS.upstream_requests_per_message.reset();
    for (name, fresh) in freshness {
        METRICS
            .latest_state_age
            .with_label_values(&[name])
            .set(fresh.oldest_state);
        if fresh.published > 0 {
            METRICS
                .upstream_requests_per_message
                .with_label_values(&[name])
                .set(fresh.requests as f64 / fresh.published as f64);
        }
    }
    // Topics with no live instance read 0 rather than their last value.
    METRICS.stale_instances.reset();
    METRICS.queued_bytes.reset();
    for (name, (stale, queued)) in per_topic {
        METRICS.stale_instances.with_label_values(&[name]).set(stale);
        METRICS.queued_bytes.with_label_values(&[name]).set(queued);
    }
    reply(200, "text/plain; version=0.0.4; charset=utf-8", METRICS.render())
}
