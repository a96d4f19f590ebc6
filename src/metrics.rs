//! Every metric, defined in one place (Prometheus conventions: `sidestream_` prefix, `_total`
//! counters, `_seconds` histograms, labels bounded by the config: the topic *name*, never an
//! instance). Modules record through [`METRICS`]; the admin listener renders it.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Upstream exchanges by outcome: `changed`, `unchanged`, `error`, `timeout`, `circuit_open`.
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    /// How long requests waited for the backend budget, by `priority` (`auth`, `held`,
    /// `idle`): the stretch of poll intervals when `max_requests_per_second` is short.
    pub upstream_budget_wait: HistogramVec,
    /// Requests waiting for the backend budget now, by `priority`.
    pub upstream_budget_waiting: IntGaugeVec,
    /// Backend requests refused before they were sent, by traffic `class` (`topic`, `auth`,
    /// `inbound`) and `reason` (`circuit_open`, `no_permit`, `no_budget`).
    pub upstream_refusals: IntCounterVec,
    pub messages_published: IntCounterVec,
    /// Messages written to clients, by transport.
    pub deliveries: IntCounterVec,
    pub bytes_written: IntCounterVec,
    pub subscribers: IntGaugeVec,
    /// What slow-client policies did: `dropped` (conflate, drop_oldest) or `disconnected`.
    pub overflow: IntCounterVec,
    /// Clients that came back with a cursor: `replayed` from history or told to `reset`.
    pub resumes: IntCounterVec,
    pub topic_instances: IntGauge,
    pub stale_instances: IntGaugeVec,
    pub queued_bytes: IntGaugeVec,
    pub websocket_deflate_compressions: IntCounter,
    /// Bytes into and out of the deflater (`direction` = `in`/`out`): the compression ratio.
    pub websocket_deflate_bytes: IntCounterVec,
    pub websocket_inbound_forwarded: IntCounter,
    /// `deltas = true`: JSON Patches computed, by `kind`: `publish` (once per message, for
    /// every delta subscriber at once) or `resume` (once per client resuming from history).
    pub delta_computations: IntCounterVec,
    /// Computed patches not smaller than their state: the full state went instead.
    pub delta_full_fallbacks: IntCounterVec,
    /// Bytes of patches sent to clients (payload bytes, without framing)...
    pub delta_patch_bytes: IntCounterVec,
    /// ...and the bytes of the full states they replaced: what those clients would have got.
    pub delta_replaced_bytes: IntCounterVec,
    /// Requests or connections refused by a `[limits]` entry (or a WebSocket size/rate
    /// limit), by `limit` name.
    pub limit_hits: IntCounterVec,
    /// Subscriber auth outcomes by policy: `allowed`, `unauthenticated` (401), `forbidden`
    /// (403), `unavailable` (keys or callback not reachable), `expired` (stream ended).
    pub auth_decisions: IntCounterVec,
    /// Requests sent to auth callbacks (cache misses), by policy.
    pub auth_callback_requests: IntCounterVec,
    /// Requests from an origin not in `[cors] allowed_origins` (WebSocket refused, no CORS
    /// headers otherwise).
    pub origin_refusals: IntCounter,
    /// Long polls read and routed by sidestream itself: the next request on a connection
    /// whose previous poll was held (`downstream::next_poll`), not by pingora.
    pub long_polls_read_directly: IntCounter,
    /// Held long polls answered by the publishing task itself, one `send` on the client's
    /// socket without waking the poll's task (`downstream::long_poll::answer_sink`).
    pub long_polls_answered_by_publisher: IntCounter,
    /// SSE streams opened from a request head sidestream read itself, before any pingora
    /// session existed (`downstream::sse_lane`).
    pub sse_streams_opened_directly: IntCounter,
    /// Request paths refused before routing, by `reason`: a canonicalization refusal
    /// (`dot_segment`, `encoded_separator`, …, `400`) or `shielded` (a pass-through to a
    /// protected topic's backend path, `403`).
    pub path_refusals: IntCounterVec,
    /// Client connections open on the main listener (admitted under `[limits]`).
    pub client_connections: IntGauge,
    /// `[cluster]`: poller leases this sidecar holds now (one per topic instance it polls).
    pub cluster_leases_held: IntGauge,
    /// `[cluster]`: latency of the publish script, by `outcome` (`ok`, `dup`, `fenced`, `error`).
    pub cluster_publish_duration: HistogramVec,
    /// `[cluster]`: messages received over Pub/Sub and delivered to local subscribers.
    pub cluster_pubsub_deliveries: IntCounter,
    /// `[cluster]`: gaps found in the Pub/Sub sequence, by `outcome`: `repaired` from the
    /// stream, or `reset` (the stream no longer had them; clients are told).
    pub cluster_gap_repairs: IntCounterVec,
    /// `[cluster]`: publishes refused because the publisher had lost its lease.
    pub cluster_fenced_publishes: IntCounter,
    /// `[cluster]`: 1 while the `connection` (`commands`, `pubsub`) to Redis works.
    pub cluster_redis_connected: IntGaugeVec,
    pub cluster_degraded: IntGauge,
    /// Freshness: from the hub taking a message from the upstream to its write to a client
    /// socket, observed once per write (the oldest message of a batch), per topic name.
    pub delivery_freshness: HistogramVec,
    /// Age of the latest state (the newest message) of the topic's stalest live instance.
    pub latest_state_age: prometheus::GaugeVec,
    /// Backend requests per published message over the topic's live instances: what one
    /// poll for every client would have cost, divided out (1 = every request changed).
    pub upstream_requests_per_message: prometheus::GaugeVec,
    pub cluster_degraded_transitions: IntCounterVec,
    /// `[cluster]`: failed Redis calls, by `operation`.
    pub cluster_redis_errors: IntCounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    // The names and labels below are constants; a mistake in them fails every test at once.
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique counter");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(metric.clone())).expect("unique gauge");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique counter");
            metric
        };
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidestream_upstream_request_duration_seconds",
                "backend request latency",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["topic"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(upstream_duration.clone()))
            .expect("unique histogram");
        let upstream_budget_wait = HistogramVec::new(
            HistogramOpts::new(
                "sidestream_upstream_budget_wait_seconds",
                "time backend requests waited for the max_requests_per_second budget",
            )
            .buckets(vec![
                0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["priority"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(upstream_budget_wait.clone()))
            .expect("unique histogram");
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(metric.clone())).expect("unique gauge");
            metric
        };
        let topic_instances = gauge("sidestream_topic_instances", "live topic instances");
        let cluster_publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidestream_cluster_publish_script_seconds",
                "latency of the cluster publish script (one Redis round trip)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            &["outcome"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(cluster_publish_duration.clone()))
            .expect("unique histogram");
        let delivery_freshness = HistogramVec::new(
            HistogramOpts::new(
                "sidestream_delivery_freshness_seconds",
                "from the upstream response to the write to the client socket",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["topic"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(delivery_freshness.clone()))
            .expect("unique histogram");
        let float_gauge_vec = |name: &str, help: &str| {
            let metric = prometheus::GaugeVec::new(Opts::new(name, help), &["topic"]).expect("valid gauge");
            registry.register(Box::new(metric.clone())).expect("unique gauge");
            metric
        };
        let latest_state_age = float_gauge_vec(
            "sidestream_latest_state_age_seconds",
            "age of the newest message of the topic's stalest live instance",
        );
        let upstream_requests_per_message = float_gauge_vec(
            "sidestream_upstream_requests_per_message",
            "backend requests per published message over the topic's live instances",
        );
        Metrics {
            delivery_freshness,
            latest_state_age,
            upstream_requests_per_message,
            upstream_requests: counter_vec(
                "sidestream_upstream_requests_total",
                "backend exchanges by outcome",
                &["topic", "outcome"],
            ),
            upstream_duration,
            upstream_budget_wait,
            upstream_budget_waiting: gauge_vec(
                "sidestream_upstream_budget_waiting",
                "backend requests waiting for the budget",
                &["priority"],
            ),
            upstream_refusals: counter_vec(
                "sidestream_upstream_refusals_total",
                "backend requests refused before sending, by traffic class and reason",
                &["class", "reason"],
            ),
            messages_published: counter_vec(
                "sidestream_messages_published_total",
                "messages published into topics",
                &["topic"],
            ),
            deliveries: counter_vec(
                "sidestream_deliveries_total",
                "messages written to clients",
                &["topic", "transport"],
            ),
            bytes_written: counter_vec(
                "sidestream_bytes_written_total",
                "bytes of messages written to clients",
                &["transport"],
            ),
            subscribers: gauge_vec(
                "sidestream_subscribers",
                "clients connected",
                &["topic", "transport"],
            ),
            overflow: counter_vec(
                "sidestream_slow_client_actions_total",
                "what slow-client policies did",
                &["topic", "policy", "action"],
            ),
            resumes: counter_vec(
                "sidestream_resumes_total",
                "clients resuming with a cursor",
                &["topic", "outcome"],
            ),
            topic_instances,
            stale_instances: gauge_vec(
                "sidestream_stale_instances",
                "topic instances serving stale data (upstream failing)",
                &["topic"],
            ),
            queued_bytes: gauge_vec(
                "sidestream_queued_bytes",
                "bytes waiting in subscriber queues",
                &["topic"],
            ),
            websocket_deflate_compressions: counter(
                "sidestream_websocket_deflate_compressions_total",
                "permessage-deflate compressions of hub messages (once per message)",
            ),
            websocket_deflate_bytes: counter_vec(
                "sidestream_websocket_deflate_bytes_total",
                "bytes into and out of permessage-deflate",
                &["direction"],
            ),
            websocket_inbound_forwarded: counter(
                "sidestream_websocket_inbound_forwarded_total",
                "client WebSocket messages forwarded to the backend",
            ),
            delta_computations: counter_vec(
                "sidestream_delta_computations_total",
                "JSON Patches computed: once per message (publish) or per resuming client (resume)",
                &["topic", "kind"],
            ),
            delta_full_fallbacks: counter_vec(
                "sidestream_delta_full_fallbacks_total",
                "JSON Patches not smaller than their state, replaced by the full state",
                &["topic"],
            ),
            delta_patch_bytes: counter_vec(
                "sidestream_delta_patch_bytes_total",
                "bytes of JSON Patches sent to clients",
                &["topic"],
            ),
            delta_replaced_bytes: counter_vec(
                "sidestream_delta_replaced_bytes_total",
                "bytes of the full states that patches sent to clients replaced",
                &["topic"],
            ),
            limit_hits: counter_vec(
                "sidestream_limit_hits_total",
                "requests or connections refused by a limit",
                &["limit"],
            ),
            auth_decisions: counter_vec(
                "sidestream_auth_decisions_total",
                "subscriber auth outcomes",
                &["policy", "outcome"],
            ),
            auth_callback_requests: counter_vec(
                "sidestream_auth_callback_requests_total",
                "requests sent to auth callbacks (cache misses)",
                &["policy"],
            ),
            origin_refusals: counter(
                "sidestream_origin_refusals_total",
                "requests from origins outside the CORS allowlist",
            ),
            long_polls_read_directly: counter(
                "sidestream_long_polls_read_directly_total",
                "long polls read by sidestream itself on a connection whose previous poll was held",
            ),
            long_polls_answered_by_publisher: counter(
                "sidestream_long_polls_answered_by_publisher_total",
                "held long polls answered by the publishing task itself, without waking the poll's task",
            ),
            sse_streams_opened_directly: counter(
                "sidestream_sse_streams_opened_directly_total",
                "SSE streams opened from a request head read by sidestream itself, without a pingora session",
            ),
            path_refusals: counter_vec(
                "sidestream_path_refusals_total",
                "request paths refused before routing (ambiguous spelling, or a shielded backend path)",
                &["reason"],
            ),
            client_connections: gauge(
                "sidestream_client_connections",
                "client connections open on the main listener",
            ),
            cluster_leases_held: gauge(
                "sidestream_cluster_leases_held",
                "poller leases this sidecar holds",
            ),
            cluster_publish_duration,
            cluster_pubsub_deliveries: counter(
                "sidestream_cluster_pubsub_deliveries_total",
                "messages received over Redis Pub/Sub and delivered locally",
            ),
            cluster_gap_repairs: counter_vec(
                "sidestream_cluster_gap_repairs_total",
                "gaps in the Pub/Sub sequence: repaired from the stream, or reset",
                &["outcome"],
            ),
            cluster_fenced_publishes: counter(
                "sidestream_cluster_fenced_publishes_total",
                "publishes refused because the publisher lost its lease",
            ),
            cluster_redis_connected: gauge_vec(
                "sidestream_cluster_redis_connected",
                "1 while the connection to Redis works",
                &["connection"],
            ),
            cluster_degraded: gauge(
                "sidestream_cluster_degraded",
                "1 while Redis is unreachable past fallback_after_ms and topics are served locally",
            ),
            cluster_degraded_transitions: counter_vec(
                "sidestream_cluster_degraded_transitions_total",
                "changes of the cluster state: entered degraded (local) mode, or resumed",
                &["to"],
            ),
            cluster_redis_errors: counter_vec(
                "sidestream_cluster_redis_errors_total",
                "failed Redis calls",
                &["operation"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot render metrics: {error}");
        }
        out
    }
}

/// Counts one connected client of a transport while it lives (in the metrics, and in the
/// instance's stats for the admin API).
pub struct SubscriberGauge {
    gauge: IntGauge,
    _counted: Option<crate::hub::stats::SubscriberCount>,
}

impl SubscriberGauge {
    pub fn new(topic: &crate::hub::Topic, transport: &str) -> Self {
        let known = crate::hub::Transport::from_name(transport);
        let gauge = match (handles(topic), known) {
            (Some(handles), Some(known)) => handles.subscribers[transport_index(known)].clone(),
            _ => METRICS
                .subscribers
                .with_label_values(&[&topic.key().name, transport]),
        };
        gauge.inc();
        let counted = known.map(|t| topic.stats().subscriber(t));
        SubscriberGauge {
            gauge,
            _counted: counted,
        }
    }
}

/// One instance's labelled metric handles, made once per instance (kept in its stats'
/// recorder slot) so that the hot paths do not look them up by label — a hash of the labels
/// and a lock — on every write, subscribe and resume.
struct TopicHandles {
    freshness: Histogram,
    /// By [`crate::hub::Transport::ALL`] order.
    subscribers: [IntGauge; 3],
    long_poll_deliveries: IntCounter,
    replayed: IntCounter,
    reset: IntCounter,
}

fn handles(topic: &crate::hub::Topic) -> Option<&TopicHandles> {
    topic.stats().recorder(|| {
        let name = topic.key().name.as_ref();
        TopicHandles {
            freshness: METRICS.delivery_freshness.with_label_values(&[name]),
            subscribers: crate::hub::Transport::ALL
                .map(|transport| METRICS.subscribers.with_label_values(&[name, transport.name()])),
            long_poll_deliveries: METRICS.deliveries.with_label_values(&[name, "long_poll"]),
            replayed: METRICS.resumes.with_label_values(&[name, "replayed"]),
            reset: METRICS.resumes.with_label_values(&[name, "reset"]),
        }
    })
}

fn transport_index(transport: crate::hub::Transport) -> usize {
    crate::hub::Transport::ALL
        .iter()
        .position(|known| *known == transport)
        .unwrap_or(0)
}

/// `count` messages went to a long-poll client of `topic`.
pub fn long_poll_delivered(topic: &crate::hub::Topic, count: u64) {
    match handles(topic) {
        Some(handles) => handles.long_poll_deliveries.inc_by(count),
        None => METRICS
            .deliveries
            .with_label_values(&[&topic.key().name, "long_poll"])
            .inc_by(count),
    }
}

/// `count` messages of `topic` are being written to a client, `message` the oldest: counts
/// them for the admin API and records how fresh they are.
pub fn delivered(topic: &crate::hub::Topic, message: &crate::hub::Message, count: u64) {
    topic.stats().delivered(count);
    if let Some(handles) = handles(topic) {
        handles
            .freshness
            .observe(message.received.elapsed().as_secs_f64());
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The hub reports through [`crate::hub::HubEvents`]; this records its events.
impl crate::hub::HubEvents for Metrics {
    fn published(&self, topic: &str, policy: &'static str, dropped: u64, disconnected: u64) {
        self.messages_published.with_label_values(&[topic]).inc();
        if dropped > 0 {
            self.overflow
                .with_label_values(&[topic, policy, "dropped"])
                .inc_by(dropped);
        }
        if disconnected > 0 {
            self.overflow
                .with_label_values(&[topic, policy, "disconnected"])
                .inc_by(disconnected);
        }
    }

    fn resumed(&self, topic: &crate::hub::Topic, outcome: &'static str) {
        match (handles(topic), outcome) {
            (Some(handles), "replayed") => handles.replayed.inc(),
            (Some(handles), "reset") => handles.reset.inc(),
            _ => self
                .resumes
                .with_label_values(&[&topic.key().name, outcome])
                .inc(),
        }
    }

    fn delta_computed(&self, topic: &str, kind: &'static str, patch_bytes: usize, document_bytes: usize) {
        self.delta_computations.with_label_values(&[topic, kind]).inc();
        if patch_bytes >= document_bytes {
            self.delta_full_fallbacks.with_label_values(&[topic]).inc();
        }
    }

    fn delta_sent(&self, topic: &str, patch_bytes: usize, full_bytes: usize) {
        self.delta_patch_bytes
            .with_label_values(&[topic])
            .inc_by(patch_bytes as u64);
        self.delta_replaced_bytes
            .with_label_values(&[topic])
            .inc_by(full_bytes as u64);
    }
}
