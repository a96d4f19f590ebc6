//! Validation of `[auth.*]`, `[cors]`, `[limits]` and secrets.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use toml::Spanned;

use super::super::file::{RawAuth, RawCallback, RawCors, RawJwt, RawLimits, RawSecret};
use super::super::security::{
    AuthKind, AuthSpec, CallbackSpec, CorsSettings, JwtKeys, JwtSpec, Limits, Secret,
};
use super::Checker;

/// The key families jsonwebtoken verifies with one kind of key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(algorithm: Algorithm) -> Family {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

impl Checker<'_> {
    /// A secret inline, from an environment variable, or from a file (trailing newline
    /// trimmed). `min_len` guards against placeholder values.
    pub(super) fn secret(&mut self, raw: &Spanned<RawSecret>, name: &str, min_len: usize) -> Option<Secret> {
        let span = raw.span();
        let value = match raw.get_ref() {
            RawSecret::Inline(value) => value.clone(),
            RawSecret::From(source) => match (&source.env, &source.file) {
                (Some(var), None) => match std::env::var(var) {
                    Ok(value) if !value.is_empty() => value,
                    _ => {
                        self.error(
                            span,
                            format!("`{name}`: environment variable {var} is not set or empty"),
                            Some(format!(
                                "export {var}=... before starting, or use `{{ file = \"/path\" }}`"
                            )),
                        );
                        return None;
                    }
                },
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(value) => value.trim_end_matches(['\r', '\n']).to_string(),
                    Err(error) => {
                        self.error(
                            span,
                            format!("`{name}`: cannot read {path}: {error}"),
                            Some("mount the secret file, or use `{ env = \"NAME\" }`".into()),
                        );
                        return None;
                    }
                },
                _ => {
                    self.error(
                        span,
                        format!("`{name}` must name exactly one of `env` or `file`"),
                        Some(
                            "e.g. `{ env = \"SIDESTREAM_SECRET\" }` or `{ file = \"/run/secrets/x\" }`"
                                .into(),
                        ),
                    );
                    return None;
                }
            },
        };
        if value.len() < min_len {
            self.error(
                span,
                format!("`{name}` is shorter than {min_len} characters"),
                Some("use a long random secret, e.g. `openssl rand -hex 32`".into()),
            );
            return None;
        }
        Some(Secret::new(value))
    }

    pub(super) fn limits(&mut self, raw: &RawLimits) -> Limits {
        let default = Limits::default();
        Limits {
            max_connections: self.count(
                &raw.max_connections,
                None,
                "max_connections",
                default.max_connections,
            ),
            max_connections_per_ip: self.count(
                &raw.max_connections_per_ip,
                None,
                "max_connections_per_ip",
                default.max_connections_per_ip,
            ),
            max_topic_instances: self.count(
                &raw.max_topic_instances,
                None,
                "max_topic_instances",
                default.max_topic_instances,
            ),
            max_long_polls_per_ip: self.count(
                &raw.max_long_polls_per_ip,
                None,
                "max_long_polls_per_ip",
                default.max_long_polls_per_ip,
            ),
            max_topic_instances_per_client: self.count(
                &raw.max_topic_instances_per_client,
                None,
                "max_topic_instances_per_client",
                default.max_topic_instances_per_client,
            ),
            topic_instance_creations_per_client_per_minute: self.count(
                &raw.topic_instance_creations_per_client_per_minute,
                None,
                "topic_instance_creations_per_client_per_minute",
                default.topic_instance_creations_per_client_per_minute,
            ),
            max_request_header_bytes: self.count(
                &raw.max_request_header_bytes,
                None,
                "max_request_header_bytes",
                default.max_request_header_bytes,
            ),
            request_header_timeout: self.duration_ms(
                &raw.request_header_timeout_ms,
                None,
                "request_header_timeout_ms",
                u64::try_from(default.request_header_timeout.as_millis()).unwrap_or(u64::MAX),
                false,
            ),
        }
    }

    pub(super) fn cors(&mut self, raw: &RawCors) -> CorsSettings {
        let mut cors = CorsSettings {
            allow_credentials: raw.allow_credentials.as_ref().is_some_and(|c| *c.get_ref()),
            preflight_max_age: self.duration_ms(
                &raw.preflight_max_age_ms,
                None,
                "preflight_max_age_ms",
                600_000,
                true,
            ),
            ..CorsSettings::default()
        };
        for origin in raw.allowed_origins.iter().flat_map(|list| list.get_ref()) {
            let text = origin.get_ref();
            if text == "*" {
                cors.any_origin = true;
                continue;
            }
            let valid = text.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri
                        .path_and_query()
                        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
            }) && !text.ends_with('/');
            if valid {
                cors.allowed_origins.insert(text.to_ascii_lowercase());
            } else {
                self.error(
                    origin.span(),
                    format!("{text:?} is not an origin"),
                    Some(
                        "write scheme://host[:port] with no path, e.g. \"https://app.example.com\", or \"*\""
                            .into(),
                    ),
                );
            }
        }
        if cors.any_origin && cors.allow_credentials {
            if let Some(flag) = &raw.allow_credentials {
                self.error(
                    flag.span(),
                    "`allow_credentials` cannot be combined with the origin \"*\"",
                    Some("browsers refuse credentials for a wildcard origin: list the origins".into()),
                );
            }
        }
        cors
    }

    /// Every `[auth.<name>]` policy, by name.
    pub(super) fn auth_policies(
        &mut self,
        raw: &BTreeMap<String, Spanned<RawAuth>>,
    ) -> BTreeMap<String, Arc<AuthSpec>> {
        let mut policies = BTreeMap::new();
        for (name, policy) in raw {
            let span = policy.span();
            let kind = match (&policy.get_ref().jwt, &policy.get_ref().callback) {
                (Some(jwt), None) => self.jwt(jwt).map(AuthKind::Jwt),
                (None, Some(callback)) => self.callback(callback).map(AuthKind::Callback),
                _ => {
                    self.error(
                        span,
                        format!("`[auth.{name}]` must set exactly one of `jwt` or `callback`"),
                        Some(format!("e.g. `[auth.{name}.jwt]` with `algorithms` and a key")),
                    );
                    None
                }
            };
            if let Some(kind) = kind {
                let spec = AuthSpec {
                    name: Arc::from(name.as_str()),
                    kind,
                };
                policies.insert(name.clone(), Arc::new(spec));
            }
        }
        policies
    }

    fn jwt(&mut self, raw: &Spanned<RawJwt>) -> Option<JwtSpec> {
        let span = raw.span();
        let jwt = raw.get_ref();
        let mut algorithms = Vec::new();
        for name in jwt.algorithms.iter().flat_map(|list| list.get_ref()) {
            match Algorithm::from_str(name.get_ref()) {
                Ok(algorithm) => algorithms.push((algorithm, name.span())),
                Err(_) => self.error(
                    name.span(),
                    format!("unknown JWT algorithm {:?}", name.get_ref()),
                    Some("use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA".into()),
                ),
            }
        }
        let Some(&(first, _)) = algorithms.first() else {
            if jwt
                .algorithms
                .as_ref()
                .is_none_or(|list| list.get_ref().is_empty())
            {
                self.error(
                    span,
                    "`jwt.algorithms` is missing or empty",
                    Some("list the algorithms your issuer signs with, e.g. algorithms = [\"RS256\"]".into()),
                );
            }
            return None;
        };
        let family = family(first);
        if let Some((other, other_span)) = algorithms.iter().find(|(a, _)| self::family(*a) != family) {
            self.error(
                other_span.clone(),
                format!("{other:?} is not of the same key family as {first:?}"),
                Some("one policy verifies with one kind of key: split it into two policies".into()),
            );
            return None;
        }
        let keys = self.jwt_keys(jwt, span.clone(), family)?;
        let optional_name = |field: &Option<Spanned<String>>| {
            field
                .as_ref()
                .map(|v| v.get_ref().clone())
                .filter(|v| !v.is_empty())
        };
        Some(JwtSpec {
            algorithms: algorithms.into_iter().map(|(a, _)| a).collect(),
            keys,
            cookie: optional_name(&jwt.cookie),
            query_param: match &jwt.query_param {
                Some(name) => optional_name(&Some(name.clone())),
                None => Some("access_token".to_string()),
            },
            topics_claim: optional_name(&jwt.topics_claim),
            audience: optional_name(&jwt.audience),
            issuer: optional_name(&jwt.issuer),
            leeway: self.duration_ms(&jwt.leeway_ms, None, "leeway_ms", 5_000, true),
            close_on_expiry: jwt.close_on_expiry.as_ref().is_none_or(|c| *c.get_ref()),
        })
    }

    fn jwt_keys(&mut self, jwt: &RawJwt, span: std::ops::Range<usize>, family: Family) -> Option<JwtKeys> {
        let given = [
            jwt.secret.is_some(),
            jwt.public_key_file.is_some(),
            jwt.jwks_url.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.error(
                span,
                "a `jwt` policy needs exactly one of `secret`, `public_key_file` or `jwks_url`",
                Some("HS* algorithms use `secret`; RS*/PS*/ES*/EdDSA use a public key or a JWKS".into()),
            );
            return None;
        }
        if let Some(secret) = &jwt.secret {
            if family != Family::Hmac {
                self.error(
                    secret.span(),
                    "`secret` verifies only HS256/HS384/HS512 tokens",
                    Some("use `public_key_file` or `jwks_url` for public-key algorithms".into()),
                );
                return None;
            }
            let secret = self.secret(secret, "secret", 32)?;
            let material = secret.expose().as_bytes();
            return Some(JwtKeys::from_key(DecodingKey::from_secret(material), material));
        }
        if family == Family::Hmac {
            self.error(
                span,
                "HS* algorithms need a shared `secret`",
                Some("add `secret = { env = \"JWT_SECRET\" }`".into()),
            );
            return None;
        }
        if let Some(path) = &jwt.public_key_file {
            let pem = match std::fs::read(path.get_ref()) {
                Ok(pem) => pem,
                Err(error) => {
                    self.error(
                        path.span(),
                        format!("cannot read {}: {error}", path.get_ref()),
                        None,
                    );
                    return None;
                }
            };
            let key = match family {
                Family::Rsa => DecodingKey::from_rsa_pem(&pem),
                Family::Ec => DecodingKey::from_ec_pem(&pem),
                Family::Ed | Family::Hmac => DecodingKey::from_ed_pem(&pem),
            };
            return match key {
                Ok(key) => Some(JwtKeys::from_key(key, &pem)),
                Err(error) => {
                    self.error(
                        path.span(),
                        format!(
                            "{} is not a {family:?} public key in PEM: {error}",
                            path.get_ref()
                        ),
                        Some("export the public key, e.g. `openssl pkey -pubout -in key.pem`".into()),
                    );
                    None
                }
            };
        }
        let url = jwt.jwks_url.as_ref()?;
        if !url.get_ref().starts_with('/') {
            self.error(
                url.span(),
                "`jwks_url` must be a path on the backend, starting with `/`",
                Some(
                    "the sidecar fetches it from `upstream.base_url`, e.g. \"/.well-known/jwks.json\"".into(),
                ),
            );
            return None;
        }
        Some(JwtKeys::Jwks {
            url: url.get_ref().clone(),
            refresh: self.duration_ms(&jwt.jwks_refresh_ms, None, "jwks_refresh_ms", 300_000, false),
        })
    }

    fn callback(&mut self, raw: &Spanned<RawCallback>) -> Option<CallbackSpec> {
        let callback = raw.get_ref();
        let url = match &callback.url {
            Some(url) if url.get_ref().starts_with('/') => url.get_ref().clone(),
            Some(url) => {
                self.error(
                    url.span(),
                    "`callback.url` must be a path on the backend, starting with `/`",
                    None,
                );
                return None;
            }
            None => {
                self.error(
                    raw.span(),
                    "`callback` needs a `url`",
                    Some("e.g. url = \"/auth/check\"; a 2xx answer allows the client".into()),
                );
                return None;
            }
        };
        let forward_headers = match &callback.forward_headers {
            Some(list) => self.header_names(list.get_ref()),
            None => vec!["authorization".to_string(), "cookie".to_string()],
        };
        Some(CallbackSpec {
            url,
            forward_headers,
            cache_ttl: self.duration_ms(&callback.cache_ms, None, "cache_ms", 10_000, true),
        })
    }

    /// Lower-cased header names, each checked.
    pub(super) fn header_names(&mut self, list: &[Spanned<String>]) -> Vec<String> {
        let mut names = Vec::new();
        for name in list {
            match http::HeaderName::from_bytes(name.get_ref().as_bytes()) {
                Ok(header) => names.push(header.as_str().to_string()),
                Err(_) => self.error(
                    name.span(),
                    format!("{:?} is not a header name", name.get_ref()),
                    None,
                ),
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const SECRET: &str = "a-secret-that-must-never-be-printed-0123456789";

    fn config_with(token: &str, extra: &str) -> String {
        format!(
            "[server]\npublish_token = {token}\n[upstream]\nbase_url = \"http://127.0.0.1:3000\"\n\
             [[topic]]\nname = \"t\"\npath = \"/t\"\nsource.push = {{}}\nauth = \"users\"\n\
             [auth.users.jwt]\nalgorithms = [\"HS256\"]\n{extra}\n"
        )
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_print() {
        std::env::set_var("SIDESTREAM_UNIT_TEST_SECRET", SECRET);
        let path = std::env::temp_dir().join(format!("sidestream-unit-secret-{}", std::process::id()));
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let text = config_with(
            "{ env = \"SIDESTREAM_UNIT_TEST_SECRET\" }",
            &format!("secret = {{ file = \"{}\" }}", path.display()),
        );
        let config = parse("t.toml", &text).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(config.server.publish_token.as_ref().unwrap().expose(), SECRET);
        let printed = format!("{config:?}");
        assert!(!printed.contains(SECRET), "a secret leaked into Debug output");
        assert!(printed.contains("Secret("), "{printed}");
    }

    #[test]
    fn a_missing_secret_source_is_an_error_with_its_place() {
        let text = config_with(
            "{ env = \"SIDESTREAM_UNIT_TEST_NOT_SET\" }",
            "secret = { file = \"/nonexistent/secret\" }",
        );
        let errors = parse("t.toml", &text).unwrap_err().to_string();
        assert!(
            errors.contains("t.toml:2:17: error: `publish_token`: environment variable"),
            "{errors}"
        );
        assert!(errors.contains("cannot read /nonexistent/secret"), "{errors}");
        let both = config_with("{ env = \"A\", file = \"B\" }", "secret = \"x\"");
        let errors = parse("t.toml", &both).unwrap_err().to_string();
        assert!(errors.contains("exactly one of `env` or `file`"), "{errors}");
        assert!(errors.contains("shorter than 32"), "{errors}");
    }

    #[test]
    fn admin_token_is_a_secret_with_a_minimum_length_and_its_place() {
        let text = "[server]\nadmin_token = \"short\"\n[upstream]\nbase_url = \"http://127.0.0.1:3000\"\n\
                    [[topic]]\nname = \"t\"\npath = \"/t\"\nsource.poll = { url = \"/t\" }\n";
        let errors = parse("t.toml", text).unwrap_err().to_string();
        assert!(errors.contains("t.toml:2:15: error: `admin_token`"), "{errors}");
        let text = text.replace("\"short\"", &format!("\"{SECRET}\""));
        let config = parse("t.toml", &text).unwrap();
        assert_eq!(config.server.admin_token.as_ref().unwrap().expose(), SECRET);
        assert!(!format!("{config:?}").contains(SECRET));
    }
}
