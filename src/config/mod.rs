//! Configuration: one TOML file, parsed into typed settings and validated as a whole before
//! anything starts. Every problem is reported at once, each with `file:line:col`.

pub mod cluster;
mod file;
pub mod security;
pub mod template;
mod validate;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use file::Transport;
pub use security::{AuthKind, AuthSpec, CallbackSpec, CorsSettings, JwtKeys, JwtSpec, Limits, Secret};
pub use template::{PathTemplate, UrlTemplate};

use crate::hub::{Mode, TopicSettings};

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub topics: Vec<TopicSpec>,
    /// `[testing] websocket_echo_path`: an echo endpoint on the same WebSocket stack, for
    /// conformance suites. `None` (the default) serves no such path.
    pub websocket_echo: Option<EchoSpec>,
    pub limits: Limits,
    pub cors: CorsSettings,
    /// `[cluster]`: `None` runs exactly as a single instance.
    pub cluster: Option<cluster::ClusterSettings>,
}

#[derive(Clone, Debug)]
pub struct EchoSpec {
    pub path: String,
    pub websocket: WebsocketSpec,
}

/// What a WebSocket message of a topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The payload as the backend sent it (text if UTF-8, else binary).
    Raw,
    /// `{"id","event","data"}`, as in long-poll batches.
    Json,
}

/// A topic's WebSocket settings.
#[derive(Clone, Debug)]
pub struct WebsocketSpec {
    /// Offer permessage-deflate when the client asks for it.
    pub deflate: bool,
    /// Messages smaller than this go uncompressed.
    pub deflate_min_bytes: usize,
    pub envelope: Envelope,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Largest client message (after inflating); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Largest single client frame; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Client messages allowed per second (burst of the same size); more closes with 1008.
    pub inbound_messages_per_second: u32,
    /// Backend URL that client messages are POSTed to; `None` = client messages close 1008.
    pub inbound: Option<UrlTemplate>,
    /// `Sec-WebSocket-Protocol` values served, in the configured order; empty = offers are
    /// ignored and none is answered. Shared: the spec is cloned per connection.
    pub subprotocols: Arc<[String]>,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// `/live`, `/ready`, `/metrics` and `/publish/...` (keep it off the public network).
    pub admin_listen: SocketAddr,
    /// Bearer token for `/publish`; from the file or `SIDESTREAM_PUBLISH_TOKEN`.
    pub publish_token: Option<Secret>,
    /// Protects the admin page and `/api/topics` (bearer or login cookie); `None`: open.
    pub admin_token: Option<Secret>,
    pub publish_max_body_bytes: usize,
    /// `/ready` waits at most this long for eager topics' first upstream results.
    pub ready_grace: Duration,
    /// Read buffer per client connection (pingora's default is 64 KiB; 0 = reads go
    /// straight to the socket, into pingora's own header and body buffers).
    pub read_buffer_bytes: usize,
    /// Write buffer per client connection (0 = every write is a send).
    pub write_buffer_bytes: usize,
    /// How long open connections get to finish after SIGTERM (pingora's grace period).
    pub drain_timeout: Duration,
    /// Worker threads of the client-facing service.
    pub threads: usize,
    /// `SO_REUSEPORT` on the client listener: several sidecars on one host may share the
    /// port and the kernel spreads connections over them (a restart hand-over, or a
    /// benchmark of a cluster behind one port). Off by default: a second process binding
    /// the same port by mistake then fails loudly.
    pub reuse_port: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// `host:port` of the backend, as written (resolved at start-up).
    pub authority: String,
    /// Prefix of every backend path, from `base_url` (empty or `/something`, no trailing `/`).
    pub path_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_body_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures (all topics together) that open the circuit breaker.
    pub circuit_failure_threshold: u32,
    /// How long the circuit stays open before one probe (doubling per failed probe, capped
    /// at `backoff_max`).
    pub circuit_open: Duration,
    /// The backend budget: requests per second from sidestream itself (polls, stream
    /// (re)connects, auth callbacks, JWKS, inbound POSTs together; not the pass-through).
    pub max_requests_per_second: u32,
    /// The longest `Cache-Control: max-age`, `Retry-After` or a stream's `retry:` may push
    /// the next request out.
    pub max_interval: Duration,
    /// Concurrency of auth callbacks and JWKS fetches (their own permits and breaker).
    pub auth_max_concurrent_requests: usize,
    /// Concurrency of inbound WebSocket POSTs (their own permits and breaker).
    pub inbound_max_concurrent_requests: usize,
    /// Longest wait for a concurrency permit (and, for auth and inbound, the budget).
    pub acquire_timeout: Duration,
}

/// One `[[topic]]`, with the defaults merged in.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub name: Arc<str>,
    pub path: PathTemplate,
    pub source: SourceSpec,
    /// SSE event name of this topic's messages (`None` = the default `message`).
    pub event: Option<Arc<str>>,
    pub transports: BTreeSet<Transport>,
    pub hub: TopicSettings,
    pub keepalive: Duration,
    pub retry: Duration,
    pub long_poll_max_wait: Duration,
    /// Longest a single write to a client may take; a client that stops reading is closed.
    pub write_timeout: Duration,
    pub websocket: WebsocketSpec,
    /// Request headers sent upstream and made part of the topic instance's identity, so
    /// clients with different credentials never share an upstream or its data.
    pub forward_headers: Vec<String>,
    /// Started at boot (not on first client); `/ready` waits for its first upstream result.
    pub eager: bool,
    /// Who may subscribe; `None` = anyone who can reach the listener.
    pub auth: Option<Arc<AuthSpec>>,
    /// `ignore_fields`: JSON Pointers a poll's change detection leaves out (a polled JSON
    /// state only; empty = every byte counts).
    pub ignore_fields: Arc<[crate::upstream::ignore_fields::FieldPattern]>,
}

impl TopicSpec {
    pub fn mode(&self) -> Mode {
        self.hub.mode
    }
}

#[derive(Clone, Debug)]
pub enum SourceSpec {
    Poll(PollSpec),
    Stream(StreamSpec),
    /// Messages arrive by `POST /publish/...` on the admin listener.
    Push,
}

/// A backend `text/event-stream` or `application/x-ndjson` URL, held open.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub url: UrlTemplate,
    /// No bytes (not even a comment) for this long means the stream is dead: reconnect.
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct PollSpec {
    pub url: UrlTemplate,
    pub interval: Duration,
    pub jitter: Duration,
}

/// One problem in a config file, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        write!(f, "{} error(s) in configuration", self.0.len())
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {error}"),
            help: Some("pass an existing TOML file with --config".into()),
        }])
    })?;
    parse(&name, &text)
}

/// Validates config text; `name` is used in error locations.
pub fn parse(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    validate::Checker::new(name, text).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_and_example_configs_are_valid() {
        for file in ["config/demo.toml", "config/example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            if let Err(errors) = load(&path) {
                panic!("{file}:\n{errors}");
            }
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(
            "t.toml",
            r#"
[upstream]
base_url = "http://127.0.0.1:3000/v1/"

[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}" }
"#,
        )
        .expect("valid");
        assert_eq!(config.upstream.authority, "127.0.0.1:3000");
        assert_eq!(config.upstream.path_prefix, "/v1");
        let topic = &config.topics[0];
        assert_eq!(topic.mode(), Mode::State);
        assert_eq!(topic.hub.on_full, crate::hub::OverflowPolicy::Conflate);
        let SourceSpec::Poll(poll) = &topic.source else {
            panic!("a poll source");
        };
        assert_eq!(poll.interval, Duration::from_millis(1000));
        assert_eq!(poll.url.render(&["AAPL".into()]), "/prices/AAPL");
    }
}
