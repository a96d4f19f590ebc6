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
use tokio_util::sync::CancellationToken;

use super::router::{header, query_param};
use crate::config::{AuthKind, AuthSpec, JwtSpec};
use crate::metrics::METRICS;
use crate::upstream::UpstreamClient;
use callback::{CallbackGate, Question};
use jwt::JwtVerifier;

/// An allowed subscription.
#[derive(Clone)]
pub struct Grant {
    /// When the credentials stop being valid; streams end then. `None` = never.
    pub expires_at: Option<SystemTime>,
    /// Callback grants: how a held stream asks again, every `cache_ms`.
    pub recheck: Option<Recheck>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("expires_at", &self.expires_at)
            .field("recheck", &self.recheck.as_ref().map(|r| r.every))
            .finish()
    }
}

/// The question a callback grant was given for, kept so that a held stream can ask again
/// (a revoked identity's stream must end, as an expired token's does).
#[derive(Clone)]
pub struct Recheck {
    state: Arc<PolicyState>,
    client: Arc<UpstreamClient>,
    instance: String,
    uri: String,
    headers: Vec<(String, String)>,
    every: std::time::Duration,
}

impl Recheck {
    /// `Err` = the backend now refuses (401/403). A backend that cannot be reached is no
    /// answer: the stream goes on and the next re-check asks again.
    async fn ask(&self) -> Result<(), Denial> {
        let (Check::Callback(gate), AuthKind::Callback(callback)) =
            (&self.state.check, &self.state.spec.kind)
        else {
            return Ok(());
        };
        let question = Question {
            policy: &self.state.spec.name,
            instance: &self.instance,
            uri: &self.uri,
            headers: self.headers.clone(),
        };
        match gate.check(callback, question, &self.client).await {
            Err(denial) if !denial.transient => Err(denial),
            _ => Ok(()),
        }
    }
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
        client: &Arc<UpstreamClient>,
    ) -> Result<Grant, Denial> {
        let state = self.state(spec);
        let outcome = match (&state.check, &spec.kind) {
            (Check::Jwt(verifier), AuthKind::Jwt(jwt)) => match token(jwt, request) {
                Some(token) => verifier.verify(jwt, &token, instance, client).await,
                None => Err(Denial::unauthenticated(no_token_reason(jwt))),
            },
            (Check::Callback(gate), AuthKind::Callback(callback)) => {
                let uri = request.uri.path_and_query().map_or("/", |p| p.as_str());
                let headers: Vec<(String, String)> = callback
                    .forward_headers
                    .iter()
                    .filter_map(|name| Some((name.clone(), header(request, name)?.to_string())))
                    .collect();
                let question = Question {
                    policy: &spec.name,
                    instance,
                    uri,
                    headers: headers.clone(),
                };
                gate.check(callback, question, client).await.map(|grant| Grant {
                    recheck: Some(Recheck {
                        state: Arc::clone(&state),
                        client: Arc::clone(client),
                        instance: instance.to_string(),
                        uri: uri.to_string(),
                        headers,
                        every: callback.cache_ttl,
                    }),
                    ..grant
                })
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

/// When a stream's credentials stop being valid, and under which policy: a token's expiry,
/// or a callback that, asked again every `cache_ms`, now refuses.
pub struct Expiry {
    at: Option<tokio::time::Instant>,
    /// Cancelled by the re-check task when the callback refuses.
    revoked: CancellationToken,
    /// Why (the callback's refusal), once revoked.
    revocation: Arc<Mutex<Option<String>>>,
    /// Ends the re-check task with the stream.
    _recheck: Option<tokio_util::sync::DropGuard>,
    pub policy: Arc<AuthSpec>,
}

/// Why held credentials lapsed.
pub enum Lapse {
    Expired,
    Revoked(String),
}

impl Expiry {
    pub fn new(grant: &Grant, policy: &Arc<AuthSpec>) -> Option<Self> {
        if grant.expires_at.is_none() && grant.recheck.is_none() {
            return None;
        }
        let at = grant.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let revoked = CancellationToken::new();
        let revocation = Arc::new(Mutex::new(None));
        let recheck = grant.recheck.clone().map(|recheck| {
            let stop = CancellationToken::new();
            tokio::spawn(recheck_task(
                recheck,
                stop.clone(),
                revoked.clone(),
                Arc::clone(&revocation),
            ));
            stop.drop_guard()
        });
        Some(Expiry {
            at,
            revoked,
            revocation,
            _recheck: recheck,
            policy: Arc::clone(policy),
        })
    }

    /// Resolves when the credentials lapse. Cancel-safe (a timer and a token).
    pub async fn lapsed(&self) -> Lapse {
        let expires = async {
            match self.at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expires => Lapse::Expired,
            _ = self.revoked.cancelled() => {
                let reason = self
                    .revocation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                Lapse::Revoked(reason.unwrap_or_else(|| "access revoked".into()))
            }
        }
    }

    /// Records that a stream was ended for it.
    pub fn record(&self, lapse: &Lapse) {
        let outcome = match lapse {
            Lapse::Expired => "expired",
            Lapse::Revoked(_) => "revoked",
        };
        METRICS
            .auth_decisions
            .with_label_values(&[&self.policy.name, outcome])
            .inc();
    }
}

/// Asks the callback again every `every` while the stream lives (`stop` is cancelled when
/// it ends, including at shutdown); on a refusal, marks the grant revoked and ends.
async fn recheck_task(
    recheck: Recheck,
    stop: CancellationToken,
    revoked: CancellationToken,
    revocation: Arc<Mutex<Option<String>>>,
) {
    // A tiny cache would ask in a tight loop; 100 ms is the floor.
    let every = recheck.every.max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = recheck.ask() => answer,
        };
        if let Err(denial) = answer {
            *revocation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(denial.reason);
            revoked.cancel();
            return;
        }
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
        let found = super::router::cookies(request)
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
