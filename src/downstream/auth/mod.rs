//! Subscriber auth: who may read a topic instance. Checked on every transport before
//! anything is subscribed or upgraded; a refusal is `401` (no or bad credentials), `403` (not
//! allowed) or, when the keys or the callback cannot be reached, a transient refusal that
//! each transport answers its own way (SSE: `200` + `retry:` + close).

mod callback;
pub mod glob;
mod jwks;
mod jwt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use pingora_http::RequestHeader;

use super::router::{header, query_param};
use crate::config::{AuthKind, AuthSpec, JwtSpec};
use crate::metrics::METRICS;
use crate::upstream::UpstreamClient;
use callback::{CallbackGate, Question};
use jwt::JwtVerifier;

/// An allowed subscription.
#[derive(Clone, Debug)]
pub struct Grant {
    /// When the credentials stop being valid; streams end then. `None` = never.
    pub expires_at: Option<SystemTime>,
}

/// A refusal, with what to tell the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub reason: String,
    /// Not the client's fault (keys or callback unreachable): worth retrying.
    pub transient: bool,
}

impl Denial {
    pub fn unauthenticated(reason: String) -> Self {
        Denial {
            status: 401,
            reason,
            transient: false,
        }
    }

    pub fn forbidden(reason: String) -> Self {
        Denial {
            status: 403,
            reason,
            transient: false,
        }
    }

    pub fn unavailable(reason: String) -> Self {
        Denial {
            status: 503,
            reason,
            transient: true,
        }
    }

    fn outcome(&self) -> &'static str {
        match self.status {
            401 => "unauthenticated",
            403 => "forbidden",
            _ => "unavailable",
        }
    }
}

/// The runtime side of every auth policy: key caches and callback decision caches.
#[derive(Default)]
pub struct Gatekeeper {
    policies: Mutex<HashMap<Arc<str>, Arc<PolicyState>>>,
}

struct PolicyState {
    spec: Arc<AuthSpec>,
    check: Check,
}

enum Check {
    Jwt(Box<JwtVerifier>),
    Callback(CallbackGate),
}

impl Gatekeeper {
    /// Whether the client behind `request` may read `instance` (`topic/param/...`).
    pub async fn admit(
        &self,
        spec: &Arc<AuthSpec>,
        request: &RequestHeader,
        instance: &str,
        client: &UpstreamClient,
    ) -> Result<Grant, Denial> {
        let state = self.state(spec);
        let outcome = match (&state.check, &spec.kind) {
            (Check::Jwt(verifier), AuthKind::Jwt(jwt)) => match token(jwt, request) {
                Some(token) => verifier.verify(jwt, &token, instance, client).await,
                None => Err(Denial::unauthenticated(no_token_reason(jwt))),
            },
            (Check::Callback(gate), AuthKind::Callback(callback)) => {
                let question = Question {
                    policy: &spec.name,
                    instance,
                    uri: request.uri.path_and_query().map_or("/", |p| p.as_str()),
                    headers: callback
                        .forward_headers
                        .iter()
                        .filter_map(|name| Some((name.clone(), header(request, name)?.to_string())))
                        .collect(),
                };
                gate.check(callback, question, client).await
            }
            // `state` is built from this very spec, so the kinds always agree.
            _ => Err(Denial::unavailable("auth policy is being reloaded".into())),
        };
        let label = match &outcome {
            Ok(_) => "allowed",
            Err(denial) => denial.outcome(),
        };
        METRICS
            .auth_decisions
            .with_label_values(&[&spec.name, label])
            .inc();
        outcome
    }

    /// The state for this exact spec; a reload that changed the policy starts afresh.
    fn state(&self, spec: &Arc<AuthSpec>) -> Arc<PolicyState> {
        let mut policies = self
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(state) = policies.get(&spec.name) {
            if Arc::ptr_eq(&state.spec, spec) {
                return Arc::clone(state);
            }
        }
        let check = match &spec.kind {
            AuthKind::Jwt(jwt) => Check::Jwt(Box::new(JwtVerifier::new(jwt))),
            AuthKind::Callback(_) => Check::Callback(CallbackGate::default()),
        };
        let state = Arc::new(PolicyState {
            spec: Arc::clone(spec),
            check,
        });
        policies.insert(Arc::clone(&spec.name), Arc::clone(&state));
        state
    }
}

/// When a stream's credentials stop being valid, and under which policy.
pub struct Expiry {
    pub at: tokio::time::Instant,
    pub policy: Arc<AuthSpec>,
}

impl Expiry {
    pub fn new(grant: &Grant, policy: &Arc<AuthSpec>) -> Option<Self> {
        let at = grant.expires_at?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Expiry {
            at: tokio::time::Instant::now() + left,
            policy: Arc::clone(policy),
        })
    }

    /// Records that a stream was ended for it.
    pub fn record(&self) {
        METRICS
            .auth_decisions
            .with_label_values(&[&self.policy.name, "expired"])
            .inc();
    }
}

/// Whether a browser may attach this policy's credentials on its own (a cookie), so that a
/// page from any origin could use them: a JWT read from a cookie, or a callback that is
/// given the client's `Cookie` header.
pub fn cookie_borne(spec: &AuthSpec) -> bool {
    match &spec.kind {
        AuthKind::Jwt(jwt) => jwt.cookie.is_some(),
        AuthKind::Callback(callback) => callback
            .forward_headers
            .iter()
            .any(|name| name.eq_ignore_ascii_case("cookie")),
    }
}

fn no_token_reason(jwt: &JwtSpec) -> String {
    let mut places = vec!["an `Authorization: Bearer <token>` header".to_string()];
    if let Some(cookie) = &jwt.cookie {
        places.push(format!("the `{cookie}` cookie"));
    }
    if let Some(param) = &jwt.query_param {
        places.push(format!("`?{param}=<token>`"));
    }
    format!("a token is required: send it in {}", places.join(" or "))
}

/// The token from the `Authorization` header, else the cookie, else the query parameter.
fn token(jwt: &JwtSpec, request: &RequestHeader) -> Option<String> {
    if let Some(value) = header(request, "authorization") {
        if let Some((scheme, token)) = value.trim().split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(token.trim().to_string());
            }
        }
    }
    if let Some(name) = &jwt.cookie {
        let found = request
            .headers
            .get_all("cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim_matches('"').to_string());
        if found.as_deref().is_some_and(|t| !t.is_empty()) {
            return found;
        }
    }
    let param = jwt.query_param.as_ref()?;
    query_param(request, param)
        .map(|value| value.into_owned())
        .filter(|t| !t.is_empty())
}
