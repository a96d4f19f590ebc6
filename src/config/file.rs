//! The TOML file as written: every field optional and spanned, so validation can say where a
//! problem is. Numbers are read as `i64` so that a negative value is reported as such rather
//! than as a type error.

use serde::Deserialize;
use toml::Spanned;

use super::Envelope;
use crate::hub::{Mode, OverflowPolicy};

pub type Field<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Field<String>,
    pub admin_listen: Field<String>,
    pub publish_token: Field<RawSecret>,
    pub admin_token: Field<RawSecret>,
    pub publish_max_body_bytes: Field<i64>,
    pub read_buffer_bytes: Field<i64>,
    pub write_buffer_bytes: Field<i64>,
    pub ready_grace_ms: Field<i64>,
    pub drain_timeout_ms: Field<i64>,
    pub threads: Field<i64>,
    pub reuse_port: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: Field<String>,
    pub timeout_ms: Field<i64>,
    pub connect_timeout_ms: Field<i64>,
    pub max_concurrent_requests: Field<i64>,
    pub max_body_bytes: Field<i64>,
    pub backoff_initial_ms: Field<i64>,
    pub backoff_max_ms: Field<i64>,
    pub circuit_failure_threshold: Field<i64>,
    pub circuit_open_ms: Field<i64>,
    pub max_requests_per_second: Field<i64>,
    pub max_interval_ms: Field<i64>,
    pub auth_max_concurrent_requests: Field<i64>,
    pub inbound_max_concurrent_requests: Field<i64>,
    pub acquire_timeout_ms: Field<i64>,
}

/// Client-facing transports a topic can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Sse,
    LongPoll,
    ShortPoll,
    Websocket,
}

/// Declares a struct with the per-topic tunables that `[defaults]` sets and each `[[topic]]`
/// may override, plus its own fields. One list keeps the two in step.
macro_rules! with_tunables {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: $ty,)*
            pub history_max_messages: Field<i64>,
            pub history_max_bytes: Field<i64>,
            pub queue_max_messages: Field<i64>,
            pub queue_max_bytes: Field<i64>,
            pub on_full: Field<OverflowPolicy>,
            pub keepalive_ms: Field<i64>,
            pub retry_ms: Field<i64>,
            pub idle_linger_ms: Field<i64>,
            pub long_poll_max_wait_ms: Field<i64>,
            pub write_timeout_ms: Field<i64>,
            pub transports: Field<Vec<Spanned<Transport>>>,
        }
    };
}

with_tunables!(RawDefaults {});

with_tunables!(RawTopic {
    name: Field<String>,
    path: Field<String>,
    source: Field<RawSource>,
    mode: Field<Mode>,
    event: Field<String>,
    websocket: Field<RawWebsocket>,
    forward_headers: Field<Vec<Spanned<String>>>,
    eager: Field<bool>,
    auth: Field<String>,
    ignore_fields: Field<Vec<Spanned<String>>>,
    deltas: Field<bool>,
});

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebsocket {
    pub deflate: Field<bool>,
    pub deflate_min_bytes: Field<i64>,
    pub envelope: Field<Envelope>,
    pub ping_interval_ms: Field<i64>,
    pub pong_timeout_ms: Field<i64>,
    pub max_message_bytes: Field<i64>,
    pub max_frame_bytes: Field<i64>,
    pub inbound: Field<String>,
    pub inbound_messages_per_second: Field<i64>,
    pub subprotocols: Field<Vec<Spanned<String>>>,
}

/// Test and conformance switches; all off by default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTesting {
    pub websocket_echo_path: Field<String>,
    pub websocket_echo_max_message_bytes: Field<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub poll: Field<RawPoll>,
    pub stream: Field<RawStream>,
    pub push: Field<RawPush>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub url: Field<String>,
    pub idle_timeout_ms: Field<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    pub url: Field<String>,
    pub interval_ms: Field<i64>,
    pub jitter_ms: Field<i64>,
}

/// A secret written inline, or (better) named: `{ env = "NAME" }` or `{ file = "/path" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Inline(String),
    From(RawSecretSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    pub env: Option<String>,
    pub file: Option<String>,
}

/// `[cluster]`: several sidecars behaving as one on Redis. `redis_url`, `redis_password` and
/// `instance_id` may each be a string or `{ env = "NAME" }` / `{ file = "/path" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis_url: Field<RawSecret>,
    pub redis_password: Field<RawSecret>,
    pub key_prefix: Field<String>,
    pub instance_id: Field<RawSecret>,
    pub lease_ttl_ms: Field<i64>,
    pub lease_renew_ms: Field<i64>,
    pub redis_timeout_ms: Field<i64>,
    pub connect_timeout_ms: Field<i64>,
    pub history_ttl_ms: Field<i64>,
    pub idempotency_window_ms: Field<i64>,
    pub intake_max_messages: Field<i64>,
    pub fallback_after_ms: Field<i64>,
}

/// `[limits]`: what one client, or all of them, may take from the process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Field<i64>,
    pub max_connections_per_ip: Field<i64>,
    pub max_topic_instances: Field<i64>,
    pub max_long_polls_per_ip: Field<i64>,
    pub max_topic_instances_per_client: Field<i64>,
    pub topic_instance_creations_per_client_per_minute: Field<i64>,
    pub max_request_header_bytes: Field<i64>,
    pub request_header_timeout_ms: Field<i64>,
}

/// `[cors]`: which browser origins may read topics (and open WebSockets).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Field<Vec<Spanned<String>>>,
    pub allow_credentials: Field<bool>,
    pub preflight_max_age_ms: Field<i64>,
}

/// One `[auth.<name>]` policy; exactly one of its kinds is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt: Field<RawJwt>,
    pub callback: Field<RawCallback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub algorithms: Field<Vec<Spanned<String>>>,
    pub secret: Field<RawSecret>,
    pub public_key_file: Field<String>,
    pub jwks_url: Field<String>,
    pub jwks_refresh_ms: Field<i64>,
    pub cookie: Field<String>,
    pub query_param: Field<String>,
    pub topics_claim: Field<String>,
    pub audience: Field<String>,
    pub issuer: Field<String>,
    pub leeway_ms: Field<i64>,
    pub close_on_expiry: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCallback {
    pub url: Field<String>,
    pub forward_headers: Field<Vec<Spanned<String>>>,
    pub cache_ms: Field<i64>,
}
