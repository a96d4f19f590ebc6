//! Resolved `[cluster]` settings: several sidecars behaving as one on Redis.

use std::time::Duration;

use super::security::Secret;

/// Present only when the file has a `[cluster]` section; without it nothing changes.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port[/db]`. A secret: it may carry a password, so its
    /// `Debug` form is a fingerprint and it never reaches a log.
    pub redis_url: Secret,
    /// Overrides the URL's password (`redis_password = { env = "…" }`), so the URL itself can
    /// sit in a ConfigMap and the password in a Secret.
    pub redis_password: Option<Secret>,
    /// The first part of every key: `{key_prefix}:{T}:meta` …
    pub key_prefix: String,
    /// This sidecar's name in leases and logs (default: hostname + a random suffix).
    pub instance_id: String,
    /// How long a poller's lease lives without renewal (`lease_ttl_ms`).
    pub lease_ttl: Duration,
    /// How often every held lease is renewed, in one batch (`lease_renew_ms`).
    pub lease_renew: Duration,
    /// Upper bound of any one Redis call (`redis_timeout_ms`).
    pub redis_timeout: Duration,
    /// Upper bound of connecting to Redis (`connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Meta and log of a topic instance nobody publishes to vanish after this (`history_ttl_ms`).
    pub history_ttl: Duration,
    /// How long an `Idempotency-Key` is remembered cluster-wide (`idempotency_window_ms`).
    pub idempotency_window: Duration,
    /// Pub/Sub messages waiting per topic instance before intake drops them and repairs the
    /// gap from the stream (`intake_max_messages`).
    pub intake_max_messages: usize,
    /// Redis unreachable this long → every topic is served by this sidecar alone (own
    /// poller, a local epoch) until it answers again (`fallback_after_ms`).
    pub fallback_after: Duration,
}

impl ClusterSettings {
    /// Defaults around a URL, for tests and the demo.
    pub fn with_url(redis_url: &str) -> Self {
        ClusterSettings {
            redis_url: Secret::new(redis_url),
            redis_password: None,
            key_prefix: "sidestream".into(),
            instance_id: default_instance_id(),
            lease_ttl: Duration::from_millis(3000),
            lease_renew: Duration::from_millis(1000),
            redis_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(1000),
            history_ttl: Duration::from_secs(86_400),
            idempotency_window: Duration::from_secs(300),
            intake_max_messages: 1024,
            fallback_after: Duration::from_millis(5000),
        }
    }
}

/// `hostname-xxxxxx`: unique per process even when two share a host (tests, the demo).
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sidestream".into());
    format!("{host}-{:06x}", rand::random_range(0..0x100_0000u32))
}
