//! One pass over the whole file that collects every problem before giving up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::file::{
    Field, RawAuth, RawCluster, RawCors, RawDefaults, RawLimits, RawServer, RawTesting, RawTopic, RawUpstream,
};
use super::security::{AuthSpec, Limits, Secret};
use super::template::PathTemplate;
use super::{Config, ConfigError, ConfigErrors, ServerSettings, TopicSpec, UpstreamSettings};

/// The default backend budget. 100 requests/s is what a small legacy backend (one process, a
/// few workers, ~10-50 ms per request) serves without queueing, and it is 100 instances
/// polled every second or 10 polled every 100 ms: far more than one sidecar's own topics
/// need, far less than a client flood could ask for.
pub const DEFAULT_MAX_REQUESTS_PER_SECOND: usize = 100;

mod cluster;
mod security;
mod topic;

const SECTIONS: &str =
    "`server`, `upstream`, `defaults`, `topic`, `auth`, `cors`, `limits`, `cluster`, `testing`";

pub struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Push topics are only valid when publishers can authenticate.
    has_publish_token: bool,
    /// `[auth.<name>]` policies, for topics' `auth = "<name>"`.
    auth_policies: BTreeMap<String, Arc<AuthSpec>>,
    /// Every `[auth.<name>]` written, valid or not.
    auth_names: std::collections::BTreeSet<String>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Checker {
            file,
            text,
            errors: Vec::new(),
            has_publish_token: false,
            auth_policies: BTreeMap::new(),
            auth_names: std::collections::BTreeSet::new(),
        }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>, help: Option<String>) {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
            help,
        });
    }

    fn toml_error(&mut self, error: &toml::de::Error, fallback: Range<usize>) {
        let span = error.span().unwrap_or(fallback);
        // serde names Rust types; say what to write in TOML instead.
        let message = error
            .message()
            .trim()
            .replace("expected i64", "expected an integer (without quotes)")
            .replace("expected a string", "expected a quoted string")
            .replace(
                "data did not match any variant of untagged enum RawSecret",
                "expected a quoted string, `{ env = \"NAME\" }` or `{ file = \"/path\" }`",
            );
        self.error(span, message, None);
    }

    /// Deserializes one section on its own, so a problem in one does not hide the others.
    /// `None` when it does not deserialize; its error is recorded and its semantic checks
    /// are skipped, so one typo does not cascade into "missing" errors.
    fn section<T: for<'de> Deserialize<'de>>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.toml_error(&error, span);
                None
            }
        }
    }

    pub fn run(mut self) -> Result<Config, ConfigErrors> {
        let (root, syntax_errors) = DeTable::parse_recoverable(self.text);
        if !syntax_errors.is_empty() {
            for error in &syntax_errors {
                self.toml_error(error, 0..0);
            }
            return Err(ConfigErrors(self.errors));
        }
        let mut server = None;
        let mut upstream = None;
        let mut upstream_seen = false;
        let mut defaults = None;
        let mut topics_seen = false;
        let mut topics: Vec<(Range<usize>, RawTopic)> = Vec::new();
        let mut testing = None;
        let mut auth = None;
        let mut cors = None;
        let mut limits = None;
        let mut cluster: Option<(Range<usize>, RawCluster)> = None;
        for (key, value) in root.into_inner() {
            let key_span = key.span();
            match key.get_ref().as_ref() {
                "server" => server = self.section::<RawServer>(value),
                "upstream" => {
                    upstream_seen = true;
                    upstream = self.section::<RawUpstream>(value);
                }
                "defaults" => defaults = self.section::<RawDefaults>(value),
                "testing" => testing = self.section::<RawTesting>(value),
                "auth" => auth = self.section::<BTreeMap<String, Spanned<RawAuth>>>(value),
                "cors" => cors = self.section::<RawCors>(value),
                "limits" => limits = self.section::<RawLimits>(value),
                "cluster" => cluster = self.section::<RawCluster>(value).map(|raw| (key_span, raw)),
                "topic" => {
                    topics_seen = true;
                    let span = value.span();
                    match value.into_inner() {
                        DeValue::Array(items) => {
                            for item in items {
                                let item_span = item.span();
                                if let Some(topic) = self.section::<RawTopic>(item) {
                                    topics.push((item_span, topic));
                                }
                            }
                        }
                        _ => self.error(
                            span,
                            "`topic` must be an array of tables",
                            Some("declare each topic with a `[[topic]]` header".into()),
                        ),
                    }
                }
                other => self.error(
                    key_span,
                    format!("unknown section `{other}`"),
                    Some(format!("expected one of {SECTIONS}")),
                ),
            }
        }
        let server = self.server(&server.unwrap_or_default());
        let limits = limits.map_or_else(Limits::default, |raw| self.limits(&raw));
        let cors = self.cors(&cors.unwrap_or_default());
        if let Some(raw) = &auth {
            self.auth_names = raw.keys().cloned().collect();
            self.auth_policies = self.auth_policies(raw);
        }
        self.has_publish_token = server.publish_token.is_some();
        let defaults = defaults.unwrap_or_default();
        let upstream = match upstream {
            Some(raw) => self.upstream(&raw),
            None if upstream_seen => None,
            None => {
                self.error(
                    0..0,
                    "missing `[upstream]` section",
                    Some("add `[upstream]` with `base_url = \"http://127.0.0.1:3000\"`".into()),
                );
                None
            }
        };
        if !topics_seen {
            self.error(
                self.text.len()..self.text.len(),
                "no `[[topic]]` is defined",
                Some("add at least one `[[topic]]` with `name`, `path` and `source`".into()),
            );
        }
        let mut specs: Vec<TopicSpec> = Vec::new();
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut paths: Vec<(PathTemplate, String)> = Vec::new();
        for (span, raw) in &topics {
            if let Some(spec) = self.topic(span.clone(), raw, &defaults, &mut paths, &mut names) {
                specs.push(spec);
            }
        }
        let websocket_echo = testing.and_then(|raw| self.echo(&raw, &paths));
        let cluster = cluster.and_then(|(span, raw)| self.cluster(span, &raw));
        match (self.errors.is_empty(), upstream) {
            (true, Some(upstream)) => Ok(Config {
                server,
                upstream,
                topics: specs,
                websocket_echo,
                limits,
                cors,
                cluster,
            }),
            _ => {
                self.errors.sort_by_key(|e| (e.line, e.column));
                Err(ConfigErrors(self.errors))
            }
        }
    }

    fn server(&mut self, raw: &RawServer) -> ServerSettings {
        let listen = match &raw.listen {
            Some(text) => text.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.error(
                    text.span(),
                    format!("`listen` is not an ip:port address: {:?}", text.get_ref()),
                    Some("write it like \"0.0.0.0:8080\"".into()),
                );
                SocketAddr::from(([0, 0, 0, 0], 8080))
            }),
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let admin_listen = match &raw.admin_listen {
            Some(text) => text.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.error(
                    text.span(),
                    format!("`admin_listen` is not an ip:port address: {:?}", text.get_ref()),
                    Some("write it like \"127.0.0.1:9090\"".into()),
                );
                SocketAddr::from(([127, 0, 0, 1], 9090))
            }),
            None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        let publish_token = match &raw.publish_token {
            Some(token) => self.secret(token, "publish_token", 16),
            None => std::env::var("SIDESTREAM_PUBLISH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        };
        let admin_token = raw
            .admin_token
            .as_ref()
            .and_then(|token| self.secret(token, "admin_token", 16));
        ServerSettings {
            listen,
            admin_listen,
            publish_token,
            admin_token,
            publish_max_body_bytes: self.count(
                &raw.publish_max_body_bytes,
                None,
                "publish_max_body_bytes",
                1 << 20,
            ),
            read_buffer_bytes: self.bytes_or_zero(&raw.read_buffer_bytes, "read_buffer_bytes", 0),
            write_buffer_bytes: self.bytes_or_zero(&raw.write_buffer_bytes, "write_buffer_bytes", 1460),
            ready_grace: self.duration_ms(&raw.ready_grace_ms, None, "ready_grace_ms", 10_000, true),
            drain_timeout: self.duration_ms(&raw.drain_timeout_ms, None, "drain_timeout_ms", 10_000, true),
            threads: self.count(&raw.threads, None, "threads", 2),
            reuse_port: raw.reuse_port.as_ref().is_some_and(|flag| *flag.get_ref()),
        }
    }

    fn upstream(&mut self, raw: &RawUpstream) -> Option<UpstreamSettings> {
        let (authority, path_prefix) = match &raw.base_url {
            Some(url) => self.base_url(url)?,
            None => {
                self.error(
                    0..0,
                    "`upstream.base_url` is missing",
                    Some("set it to the backend, e.g. \"http://127.0.0.1:3000\"".into()),
                );
                return None;
            }
        };
        let backoff_initial =
            self.duration_ms(&raw.backoff_initial_ms, None, "backoff_initial_ms", 1_000, false);
        let backoff_max = self.duration_ms(&raw.backoff_max_ms, None, "backoff_max_ms", 30_000, false);
        if backoff_max < backoff_initial {
            if let Some(field) = &raw.backoff_max_ms {
                self.error(
                    field.span(),
                    "`backoff_max_ms` is smaller than `backoff_initial_ms`",
                    Some("the cap must be at least the first delay".into()),
                );
            }
        }
        Some(UpstreamSettings {
            authority,
            path_prefix,
            timeout: self.duration_ms(&raw.timeout_ms, None, "timeout_ms", 5_000, false),
            connect_timeout: self.duration_ms(
                &raw.connect_timeout_ms,
                None,
                "connect_timeout_ms",
                1_000,
                false,
            ),
            max_concurrent_requests: self.count(
                &raw.max_concurrent_requests,
                None,
                "max_concurrent_requests",
                32,
            ),
            max_body_bytes: self.count(&raw.max_body_bytes, None, "max_body_bytes", 1 << 20),
            backoff_initial,
            backoff_max,
            circuit_failure_threshold: u32::try_from(self.count(
                &raw.circuit_failure_threshold,
                None,
                "circuit_failure_threshold",
                5,
            ))
            .unwrap_or(u32::MAX),
            circuit_open: self.duration_ms(&raw.circuit_open_ms, None, "circuit_open_ms", 5_000, false),
            max_requests_per_second: u32::try_from(self.count(
                &raw.max_requests_per_second,
                None,
                "max_requests_per_second",
                DEFAULT_MAX_REQUESTS_PER_SECOND,
            ))
            .unwrap_or(u32::MAX),
            max_interval: self.duration_ms(
                &raw.max_interval_ms,
                None,
                "max_interval_ms",
                u64::try_from(backoff_max.as_millis()).unwrap_or(u64::MAX),
                false,
            ),
            auth_max_concurrent_requests: self.count(
                &raw.auth_max_concurrent_requests,
                None,
                "auth_max_concurrent_requests",
                8,
            ),
            inbound_max_concurrent_requests: self.count(
                &raw.inbound_max_concurrent_requests,
                None,
                "inbound_max_concurrent_requests",
                8,
            ),
            acquire_timeout: self.duration_ms(
                &raw.acquire_timeout_ms,
                None,
                "acquire_timeout_ms",
                2_000,
                false,
            ),
        })
    }

    fn base_url(&mut self, url: &Spanned<String>) -> Option<(String, String)> {
        let help =
            Some("write it like \"http://127.0.0.1:3000\" (optionally with a path prefix)".to_string());
        let parsed = match url.get_ref().parse::<http::Uri>() {
            Ok(parsed) => parsed,
            Err(error) => {
                self.error(
                    url.span(),
                    format!("`base_url` is not a valid URL: {error}"),
                    help,
                );
                return None;
            }
        };
        match parsed.scheme_str() {
            Some("http") => {}
            Some("https") => {
                self.error(
                    url.span(),
                    "`base_url` uses https, which this build does not support",
                    Some("a sidecar talks to its pod-local backend over plain http://".into()),
                );
                return None;
            }
            _ => {
                self.error(url.span(), "`base_url` must start with http://", help);
                return None;
            }
        }
        let Some(authority) = parsed.authority().filter(|a| !a.host().is_empty()) else {
            self.error(url.span(), "`base_url` has no host", help);
            return None;
        };
        if parsed.query().is_some() {
            self.error(url.span(), "`base_url` must not have a query string", help);
            return None;
        }
        let host_port = match authority.port_u16() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => format!("{}:80", authority.host()),
        };
        Some((host_port, parsed.path().trim_end_matches('/').to_string()))
    }

    /// A positive integer from the topic, else the defaults, else `default`.
    fn count(
        &mut self,
        own: &Field<i64>,
        inherited: Option<&Spanned<i64>>,
        name: &str,
        default: usize,
    ) -> usize {
        match own.as_ref().or(inherited) {
            None => default,
            Some(value) if *value.get_ref() > 0 => usize::try_from(*value.get_ref()).unwrap_or(usize::MAX),
            Some(value) => {
                self.error(
                    value.span(),
                    format!("`{name}` must be greater than 0, found {}", value.get_ref()),
                    Some(format!("remove it to use the default ({default})")),
                );
                default
            }
        }
    }

    /// A size in bytes where 0 is meaningful (e.g. "no buffer").
    fn bytes_or_zero(&mut self, own: &Field<i64>, name: &str, default: usize) -> usize {
        match own {
            None => default,
            Some(value) if *value.get_ref() >= 0 => usize::try_from(*value.get_ref()).unwrap_or(usize::MAX),
            Some(value) => {
                self.error(
                    value.span(),
                    format!("`{name}` must be 0 or more bytes, found {}", value.get_ref()),
                    Some(format!("remove it to use the default ({default})")),
                );
                default
            }
        }
    }

    /// A duration in milliseconds; zero only where `allow_zero`.
    fn duration_ms(
        &mut self,
        own: &Field<i64>,
        inherited: Option<&Spanned<i64>>,
        name: &str,
        default_ms: u64,
        allow_zero: bool,
    ) -> Duration {
        match own.as_ref().or(inherited) {
            None => Duration::from_millis(default_ms),
            Some(value) => {
                let ms = *value.get_ref();
                if ms > 0 || (ms == 0 && allow_zero) {
                    Duration::from_millis(ms.unsigned_abs())
                } else {
                    let bound = if allow_zero { "0 or more" } else { "greater than 0" };
                    self.error(
                        value.span(),
                        format!("`{name}` must be {bound} milliseconds, found {ms}"),
                        Some(format!("remove it to use the default ({default_ms} ms)")),
                    );
                    Duration::from_millis(default_ms)
                }
            }
        }
    }
}
