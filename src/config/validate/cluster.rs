//! Validation of `[cluster]`: the Redis endpoint, key naming, and lease and timeout settings.
//! The URL is only checked, never connected to: `--check-config` must not need Redis.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::cluster::{default_instance_id, ClusterSettings};
use super::super::file::{Field, RawCluster, RawSecret};
use super::super::security::Secret;
use super::Checker;

const URL_HELP: &str = "write it like \"redis://redis:6379\" or \"redis://user@redis:6379/0\" \
                        (and the password in `redis_password = { env = \"REDIS_PASSWORD\" }`)";

impl Checker<'_> {
    /// `section` locates the `[cluster]` header, for what is missing from it.
    pub(super) fn cluster(&mut self, section: Range<usize>, raw: &RawCluster) -> Option<ClusterSettings> {
        let defaults = ClusterSettings::with_url("redis://127.0.0.1:6379");
        let redis_url = match &raw.redis_url {
            Some(url) => self.redis_url(url),
            None => {
                self.error(
                    section.clone(),
                    "`[cluster]` needs `redis_url`",
                    Some(format!("add `redis_url = \"redis://redis:6379\"`; {URL_HELP}")),
                );
                None
            }
        };
        // `Some(None)`: no override; `None`: an override that failed (reported).
        let redis_password = match &raw.redis_password {
            Some(password) => self.non_empty_secret(password, "redis_password").map(Some),
            None => Some(None),
        };
        let key_prefix = match &raw.key_prefix {
            Some(prefix) => self.key_name(prefix.span(), prefix.get_ref(), "key_prefix", 64),
            None => Some(defaults.key_prefix.clone()),
        };
        let instance_id = match &raw.instance_id {
            Some(id) => self
                .non_empty_secret(id, "instance_id")
                .and_then(|value| self.key_name(id.span(), value.expose(), "instance_id", 128)),
            None => Some(default_instance_id()),
        };
        let lease_ttl = self.cluster_ms(&raw.lease_ttl_ms, "lease_ttl_ms", defaults.lease_ttl, 500, None);
        let lease_renew = self.cluster_ms(
            &raw.lease_renew_ms,
            "lease_renew_ms",
            defaults.lease_renew,
            1,
            None,
        );
        let redis_timeout = self.cluster_ms(
            &raw.redis_timeout_ms,
            "redis_timeout_ms",
            defaults.redis_timeout,
            10,
            Some(60_000),
        );
        let connect_timeout = self.cluster_ms(
            &raw.connect_timeout_ms,
            "connect_timeout_ms",
            defaults.connect_timeout,
            1,
            None,
        );
        let history_ttl = self.cluster_ms(
            &raw.history_ttl_ms,
            "history_ttl_ms",
            defaults.history_ttl,
            60_000,
            None,
        );
        let idempotency_window = self.cluster_ms(
            &raw.idempotency_window_ms,
            "idempotency_window_ms",
            defaults.idempotency_window,
            1_000,
            None,
        );
        let intake_max_messages =
            self.intake_max_messages(&raw.intake_max_messages, defaults.intake_max_messages);
        let fallback_after = self.cluster_ms(
            &raw.fallback_after_ms,
            "fallback_after_ms",
            defaults.fallback_after,
            1,
            None,
        );
        if let (Some(ttl), Some(fallback)) = (lease_ttl, fallback_after) {
            if fallback < ttl {
                let bound = Bound {
                    value: fallback,
                    limit: ttl,
                    name: "fallback_after_ms",
                    rule: "at least",
                };
                self.timing_error(
                    &section,
                    (&raw.fallback_after_ms, &raw.lease_ttl_ms),
                    bound,
                    "a sidecar cut off from Redis polls on its own only once a lease it held has run out (default 5000 ms)",
                );
            }
        }
        if let (Some(ttl), Some(renew)) = (lease_ttl, lease_renew) {
            if renew > ttl / 2 {
                let bound = Bound {
                    value: renew,
                    limit: ttl,
                    name: "lease_renew_ms",
                    rule: "at most half of",
                };
                self.timing_error(&section, (&raw.lease_renew_ms, &raw.lease_ttl_ms), bound,
                    "a lease must outlive one lost renewal, e.g. lease_renew_ms = 1000 with lease_ttl_ms = 3000");
            }
        }
        if let (Some(ttl), Some(timeout)) = (lease_ttl, redis_timeout) {
            if timeout >= ttl {
                let bound = Bound {
                    value: timeout,
                    limit: ttl,
                    name: "redis_timeout_ms",
                    rule: "less than",
                };
                self.timing_error(
                    &section,
                    (&raw.redis_timeout_ms, &raw.lease_ttl_ms),
                    bound,
                    "a Redis call that may outlast the lease cannot keep it (default 500 ms)",
                );
            }
        }
        Some(ClusterSettings {
            redis_url: redis_url?,
            redis_password: redis_password?,
            key_prefix: key_prefix?,
            instance_id: instance_id?,
            lease_ttl: lease_ttl?,
            lease_renew: lease_renew?,
            redis_timeout: redis_timeout?,
            connect_timeout: connect_timeout?,
            history_ttl: history_ttl?,
            idempotency_window: idempotency_window?,
            intake_max_messages: intake_max_messages?,
            fallback_after: fallback_after?,
        })
    }

    /// A timing that breaks its rule against `lease_ttl_ms`, reported at the key that was
    /// written (or at `lease_ttl_ms` when `name` is the default).
    fn timing_error(
        &mut self,
        section: &Range<usize>,
        (written, ttl_field): (&Field<i64>, &Field<i64>),
        bound: Bound,
        help: &str,
    ) {
        let span = written.as_ref().or(ttl_field.as_ref()).map(Spanned::span);
        let default = if written.is_none() { ", the default" } else { "" };
        self.error(
            span.unwrap_or(section.clone()),
            format!(
                "`{}` ({}{default}) must be {} `lease_ttl_ms` ({})",
                bound.name,
                bound.value.as_millis(),
                bound.rule,
                bound.limit.as_millis()
            ),
            Some(help.into()),
        );
    }

    fn redis_url(&mut self, raw: &Spanned<RawSecret>) -> Option<Secret> {
        let url = self.non_empty_secret(raw, "redis_url")?;
        match check_redis_url(url.expose()) {
            Ok(()) => Some(url),
            Err((message, help)) => {
                self.error(raw.span(), message, Some(help));
                None
            }
        }
    }

    /// A string, `{ env = … }` or `{ file = … }` that must not be empty.
    fn non_empty_secret(&mut self, raw: &Spanned<RawSecret>, name: &str) -> Option<Secret> {
        let value = self.secret(raw, name, 0)?;
        if value.expose().is_empty() {
            self.error(
                raw.span(),
                format!("`{name}` must not be empty"),
                Some("remove it to use the default, or give it a value".into()),
            );
            return None;
        }
        Some(value)
    }

    /// A name that becomes part of Redis keys or lease values.
    fn key_name(&mut self, span: Range<usize>, value: &str, name: &str, max_bytes: usize) -> Option<String> {
        let problem = if value.is_empty() {
            Some("must not be empty".to_string())
        } else if value.len() > max_bytes {
            Some(format!("is {} bytes long, more than {max_bytes}", value.len()))
        } else {
            value
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
                .map(|c| format!("contains {c:?}"))
        };
        match problem {
            None => Some(value.to_string()),
            Some(problem) => {
                self.error(
                    span,
                    format!("`{name}` {problem}"),
                    Some(format!(
                        "use only letters, digits, `_`, `.` and `-`, at most {max_bytes} bytes \
                         (`{{`, `}}` and `:` structure the Redis keys)"
                    )),
                );
                None
            }
        }
    }

    /// A duration in milliseconds within `min_ms..=max_ms`; `None` when out of range (reported).
    fn cluster_ms(
        &mut self,
        field: &Field<i64>,
        name: &str,
        default: Duration,
        min_ms: u64,
        max_ms: Option<u64>,
    ) -> Option<Duration> {
        let Some(value) = field else {
            return Some(default);
        };
        let ms = *value.get_ref();
        let min = i64::try_from(min_ms).unwrap_or(i64::MAX);
        let max = max_ms.map_or(i64::MAX, |max| i64::try_from(max).unwrap_or(i64::MAX));
        if (min..=max).contains(&ms) {
            return Some(Duration::from_millis(ms.unsigned_abs()));
        }
        let bound = match max_ms {
            Some(max) => format!("between {min_ms} and {max} milliseconds"),
            None if min_ms <= 1 => "greater than 0 milliseconds".to_string(),
            None => format!("at least {min_ms} milliseconds"),
        };
        self.error(
            value.span(),
            format!("`{name}` must be {bound}, found {ms}"),
            Some(format!(
                "remove it to use the default ({} ms)",
                default.as_millis()
            )),
        );
        None
    }

    fn intake_max_messages(&mut self, field: &Field<i64>, default: usize) -> Option<usize> {
        let Some(value) = field else {
            return Some(default);
        };
        let count = *value.get_ref();
        if (16..=1_000_000).contains(&count) {
            return usize::try_from(count).ok();
        }
        self.error(
            value.span(),
            format!("`intake_max_messages` must be between 16 and 1000000, found {count}"),
            Some(format!("remove it to use the default ({default})")),
        );
        None
    }
}

/// Whether the Redis client can use `text`, as `(message, help)` otherwise. No message
/// quotes the URL: it may carry a password.
/// One side of a cross-check between two timings.
struct Bound {
    value: std::time::Duration,
    limit: std::time::Duration,
    name: &'static str,
    rule: &'static str,
}

fn check_redis_url(text: &str) -> Result<(), (String, String)> {
    let fail = |message: &str, help: &str| Err((message.to_string(), help.to_string()));
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        // `ParseError`'s text names the problem, never the input.
        Err(error) => {
            return Err((
                format!("`redis_url` is not a valid URL: {error}"),
                URL_HELP.into(),
            ))
        }
    };
    match url.scheme() {
        "redis" => {}
        "rediss" | "valkeys" => {
            return fail(
                "`redis_url` uses TLS (rediss://), which is not built into sidestream",
                "reach Redis through a TLS sidecar (e.g. stunnel or ghostunnel) at \
                 redis://127.0.0.1:<port>, or use a plain redis:// Redis inside the cluster network",
            )
        }
        "valkey" => {
            return fail(
                "`redis_url` must start with redis://",
                "write redis:// for Valkey too: it speaks the same protocol",
            )
        }
        "unix" | "redis+unix" | "valkey+unix" => {
            return fail(
                "`redis_url` points at a Unix socket, which is not supported",
                "let Redis listen on TCP and write redis://host:port",
            )
        }
        // The scheme is not quoted: in `password@host` typed without a scheme it is the secret.
        _ => return fail("`redis_url` must start with redis://", URL_HELP),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return fail("`redis_url` has no host", URL_HELP);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return fail(
            "`redis_url` must not have a query string or a fragment",
            "sidestream chooses the Redis protocol itself; set the password with `redis_password`",
        );
    }
    let database = url.path().trim_start_matches('/');
    if !database.is_empty() && database.parse::<u32>().is_err() {
        return fail(
            "`redis_url`'s path must be a database number",
            "e.g. redis://redis:6379/0 (or no path for database 0)",
        );
    }
    // What the client itself refuses (e.g. a wildcard host): its texts are fixed, but mask the
    // password anyway in case a future version quotes the URL.
    if let Err(error) = redis::IntoConnectionInfo::into_connection_info(url.clone()) {
        let mut message = format!("`redis_url` is not usable by the Redis client: {error}");
        if let Some(password) = url.password().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
            if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                message = message.replace(decoded.as_ref(), "***");
            }
        }
        return Err((message, URL_HELP.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::check_redis_url;
    use crate::config::parse;

    const PASSWORD: &str = "a-redis-password-that-must-never-be-printed";

    fn config_with(cluster: &str) -> String {
        format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:3000\"\n\
             [[topic]]\nname = \"t\"\npath = \"/t\"\nsource.poll = {{ url = \"/t\" }}\n\
             [cluster]\n{cluster}\n"
        )
    }

    #[test]
    fn no_cluster_section_means_single_instance() {
        let config = parse("t.toml", &config_with("").replace("[cluster]\n", "")).unwrap();
        assert!(config.cluster.is_none());
    }

    #[test]
    fn a_redis_url_alone_gets_the_defaults() {
        let config = parse("t.toml", &config_with("redis_url = \"redis://127.0.0.1:6379\"")).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.redis_url.expose(), "redis://127.0.0.1:6379");
        assert!(cluster.redis_password.is_none());
        assert_eq!(cluster.key_prefix, "sidestream");
        assert!(!cluster.instance_id.is_empty());
        assert_eq!(cluster.lease_ttl, Duration::from_millis(3000));
        assert_eq!(cluster.lease_renew, Duration::from_millis(1000));
        assert_eq!(cluster.redis_timeout, Duration::from_millis(500));
        assert_eq!(cluster.connect_timeout, Duration::from_millis(1000));
        assert_eq!(cluster.history_ttl, Duration::from_millis(86_400_000));
        assert_eq!(cluster.idempotency_window, Duration::from_millis(300_000));
        assert_eq!(cluster.intake_max_messages, 1024);
    }

    #[test]
    fn a_full_section_is_read_as_written() {
        let config = parse(
            "t.toml",
            &config_with(
                "redis_url = \"redis://user@redis.default.svc:6380/2\"\n\
                 redis_password = \"pw\"\n\
                 key_prefix = \"orders.v2\"\n\
                 instance_id = \"pod-7_a\"\n\
                 lease_ttl_ms = 4000\n\
                 lease_renew_ms = 2000\n\
                 redis_timeout_ms = 3999\n\
                 connect_timeout_ms = 250\n\
                 history_ttl_ms = 60000\n\
                 idempotency_window_ms = 1000\n\
                 intake_max_messages = 16\n",
            ),
        )
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(
            cluster.redis_url.expose(),
            "redis://user@redis.default.svc:6380/2"
        );
        assert_eq!(cluster.redis_password.unwrap().expose(), "pw");
        assert_eq!(cluster.key_prefix, "orders.v2");
        assert_eq!(cluster.instance_id, "pod-7_a");
        assert_eq!(cluster.lease_ttl, Duration::from_millis(4000));
        assert_eq!(cluster.lease_renew, Duration::from_millis(2000));
        assert_eq!(cluster.redis_timeout, Duration::from_millis(3999));
        assert_eq!(cluster.connect_timeout, Duration::from_millis(250));
        assert_eq!(cluster.history_ttl, Duration::from_millis(60_000));
        assert_eq!(cluster.idempotency_window, Duration::from_millis(1000));
        assert_eq!(cluster.intake_max_messages, 16);
    }

    #[test]
    fn url_password_and_instance_id_come_from_env_and_secrets_never_print() {
        std::env::set_var(
            "SIDESTREAM_UNIT_REDIS_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:6379/0"),
        );
        std::env::set_var("SIDESTREAM_UNIT_REDIS_PASSWORD", PASSWORD);
        std::env::set_var("SIDESTREAM_UNIT_POD_NAME", "orders-7d9f-x2x4q");
        let config = parse(
            "t.toml",
            &config_with(
                "redis_url = { env = \"SIDESTREAM_UNIT_REDIS_URL\" }\n\
                 redis_password = { env = \"SIDESTREAM_UNIT_REDIS_PASSWORD\" }\n\
                 instance_id = { env = \"SIDESTREAM_UNIT_POD_NAME\" }\n",
            ),
        )
        .unwrap();
        let printed = format!("{config:?}");
        let cluster = config.cluster.unwrap();
        assert_eq!(
            cluster.redis_url.expose(),
            format!("redis://:{PASSWORD}@127.0.0.1:6379/0")
        );
        assert_eq!(cluster.redis_password.unwrap().expose(), PASSWORD);
        assert_eq!(cluster.instance_id, "orders-7d9f-x2x4q");
        assert!(!printed.contains(PASSWORD), "a password leaked into Debug output");
        assert!(printed.contains("redis_url: Secret("), "{printed}");
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        for url in [
            format!("redis://:{PASSWORD}@redis:notaport"),
            format!("redis://:{PASSWORD}@0.0.0.0:6379"),
            format!("redis://:{PASSWORD}@redis:6379/db"),
            format!("{PASSWORD}:x@redis:6379"),
            format!("rediss://:{PASSWORD}@redis:6379"),
        ] {
            let errors = parse("t.toml", &config_with(&format!("redis_url = \"{url}\"")))
                .unwrap_err()
                .to_string();
            assert!(errors.contains("t.toml:8:13: error: `redis_url`"), "{errors}");
            assert!(!errors.contains(PASSWORD), "{errors}");
        }
    }

    #[test]
    fn redis_url_rules() {
        assert!(check_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_redis_url("redis://redis").is_ok());
        assert!(check_redis_url("redis://:pw@[::1]:6379/15").is_ok());
        let message = |url: &str| check_redis_url(url).unwrap_err();
        let (tls, help) = message("rediss://redis:6379");
        assert!(tls.contains("TLS") && help.contains("stunnel"), "{tls} {help}");
        assert!(message("http://redis:6379")
            .0
            .contains("must start with redis://"));
        assert!(message("valkey://redis:6379").1.contains("Valkey"));
        assert!(message("redis+unix:///run/redis.sock").0.contains("Unix socket"));
        assert!(message("redis://").0.contains("no host"));
        assert!(message("redis://redis:6379/?protocol=resp2")
            .0
            .contains("query string"));
        assert!(message("redis://redis:6379/x").0.contains("database number"));
        assert!(message("redis://0.0.0.0:6379").0.contains("wildcard"));
        assert!(message("redis:6379").0.contains("no host"));
    }

    /// The commented-out `[cluster]` of config/example.toml, uncommented, is valid.
    #[test]
    fn the_example_cluster_section_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let example = std::fs::read_to_string(path).unwrap();
        let mut inside = false;
        let mut text = String::new();
        for line in example.lines() {
            inside = (inside || line.starts_with("# [cluster]")) && !line.starts_with("[testing]");
            let setting = line.strip_prefix("# ").filter(|l| !l.starts_with(' '));
            match setting {
                // One `redis_url` is enough; the env-var form is shown as an alternative.
                Some(setting) if inside && !setting.starts_with("redis_url = {") => {
                    text.push_str(setting);
                }
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        let text = text
            .replace("{ env = \"REDIS_PASSWORD\" }", "\"pw\"")
            .replace("{ env = \"POD_NAME\" }", "\"pod-1\"");
        let config = parse("example.toml", &text).unwrap();
        let cluster = config.cluster.expect("the example has a [cluster] section");
        assert_eq!(cluster.redis_url.expose(), "redis://redis:6379");
        assert_eq!(cluster.instance_id, "pod-1");
    }

    #[test]
    fn timings_are_checked_against_each_other() {
        let errors = parse(
            "t.toml",
            &config_with(
                "redis_url = \"redis://redis:6379\"\nlease_ttl_ms = 1000\nredis_timeout_ms = 1000\n",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains(
                "t.toml:9:16: error: `lease_renew_ms` (1000, the default) must be at most half of `lease_ttl_ms` (1000)"
            ),
            "{errors}"
        );
        assert!(
            errors.contains(
                "t.toml:10:20: error: `redis_timeout_ms` (1000) must be less than `lease_ttl_ms` (1000)"
            ),
            "{errors}"
        );
    }
}
