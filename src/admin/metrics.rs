//! `/metrics`: refreshes the gauges that are read off the hub, then renders every metric.

use std::collections::BTreeMap;

use http::Response;

use super::reply;
use crate::hub::Registry;
use crate::metrics::METRICS;

pub fn render(registry: &Registry) -> Response<Vec<u8>> {
    let topics = registry.topics();
    METRICS
        .topic_instances
        .set(i64::try_from(topics.len()).unwrap_or(i64::MAX));
    let mut per_topic: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for topic in &topics {
        let entry = per_topic.entry(&topic.key().name).or_default();
        entry.0 += i64::from(topic.is_stale());
        entry.1 += i64::try_from(topic.queue_depth().bytes).unwrap_or(i64::MAX);
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
