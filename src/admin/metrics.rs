//! `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::Response;

use super::reply;
use crate::hub::Registry;
use crate::metrics::{WEBSOCKET_DEFLATE_COMPRESSIONS, WEBSOCKET_FRAMES_SENT, WEBSOCKET_INBOUND_FORWARDED};

pub fn render(registry: &Registry) -> Response<Vec<u8>> {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter(
        &mut out,
        "sidestream_websocket_deflate_compressions_total",
        "permessage-deflate compressions of hub messages (once per message)",
        WEBSOCKET_DEFLATE_COMPRESSIONS.get(),
    );
    counter(
        &mut out,
        "sidestream_websocket_frames_sent_total",
        "pre-encoded WebSocket frames written to clients",
        WEBSOCKET_FRAMES_SENT.get(),
    );
    counter(
        &mut out,
        "sidestream_websocket_inbound_forwarded_total",
        "client WebSocket messages forwarded to the backend",
        WEBSOCKET_INBOUND_FORWARDED.get(),
    );
    let topics = registry.topics();
    let _ = writeln!(
        out,
        "# HELP sidestream_topic_instances live topic instances\n# TYPE sidestream_topic_instances gauge\nsidestream_topic_instances {}",
        topics.len()
    );
    let _ = writeln!(
        out,
        "# HELP sidestream_subscribers current subscribers per topic\n# TYPE sidestream_subscribers gauge"
    );
    let mut per_topic: std::collections::BTreeMap<&str, (usize, u64, u64, u64, usize)> = Default::default();
    let mut depth: std::collections::BTreeMap<&str, (usize, usize, &'static str)> = Default::default();
    for topic in &topics {
        let queued = topic.queue_depth();
        let policy = match topic.settings().on_full {
            crate::hub::OverflowPolicy::Conflate => "conflate",
            crate::hub::OverflowPolicy::DropOldest => "drop_oldest",
            crate::hub::OverflowPolicy::Disconnect => "disconnect",
        };
        let queue = depth.entry(&topic.key().name).or_insert((0, 0, policy));
        queue.0 += queued.messages;
        queue.1 += queued.bytes;
        let entry = per_topic.entry(&topic.key().name).or_default();
        entry.0 += topic.subscriber_count();
        entry.1 += topic.counters.published.load(Ordering::Relaxed);
        entry.2 += topic.counters.dropped.load(Ordering::Relaxed);
        entry.3 += topic.counters.disconnected.load(Ordering::Relaxed);
        entry.4 += usize::from(topic.upstream_health().consecutive_failures > 0);
    }
    for (name, (subscribers, ..)) in &per_topic {
        let _ = writeln!(out, "sidestream_subscribers{{topic=\"{name}\"}} {subscribers}");
    }
    let series = [
        ("sidestream_messages_published_total", "messages published", 1),
        (
            "sidestream_messages_dropped_total",
            "messages dropped by slow-client policies",
            2,
        ),
        (
            "sidestream_slow_client_disconnects_total",
            "clients disconnected for being too slow",
            3,
        ),
    ];
    for (metric, help, index) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (name, values) in &per_topic {
            let value = match index {
                1 => values.1,
                2 => values.2,
                _ => values.3,
            };
            let policy = depth.get(name).map_or("", |d| d.2);
            let _ = writeln!(out, "{metric}{{topic=\"{name}\",policy=\"{policy}\"}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP sidestream_queued_messages messages waiting in subscriber queues\n# TYPE sidestream_queued_messages gauge"
    );
    for (name, (messages, _, _)) in &depth {
        let _ = writeln!(out, "sidestream_queued_messages{{topic=\"{name}\"}} {messages}");
    }
    let _ = writeln!(
        out,
        "# HELP sidestream_queued_bytes bytes waiting in subscriber queues\n# TYPE sidestream_queued_bytes gauge"
    );
    for (name, (_, bytes, _)) in &depth {
        let _ = writeln!(out, "sidestream_queued_bytes{{topic=\"{name}\"}} {bytes}");
    }
    let _ = writeln!(
        out,
        "# HELP sidestream_stale_instances topic instances serving stale data (upstream failing)\n# TYPE sidestream_stale_instances gauge"
    );
    for (name, values) in &per_topic {
        let _ = writeln!(out, "sidestream_stale_instances{{topic=\"{name}\"}} {}", values.4);
    }
    reply(200, "text/plain; version=0.0.4; charset=utf-8", out)
}
