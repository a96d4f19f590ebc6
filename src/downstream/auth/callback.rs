//! auth_request-style subscriber auth: the backend is asked (`GET <url>` with the client's
//! configured headers) and a `2xx` allows. Each decision is remembered per (identity, topic
//! instance) for `cache_ms`, and concurrent requests for the same pair share one backend
//! request, so long- and short-poll clients do not hit the auth service on every poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{Denial, Grant};
use crate::config::CallbackSpec;
use crate::metrics::METRICS;
use crate::upstream::client::Validators;
use crate::upstream::UpstreamClient;

/// Bound on remembered decisions. When full, expired ones are swept; if that frees nothing
/// the whole cache is dropped (the cost is one callback per active pair, never memory).
const MAX_ENTRIES: usize = 10_000;

type Decision = Result<(), Denial>;

struct Entry {
    decision: Arc<OnceCell<Decision>>,
    created: Instant,
}

#[derive(Default)]
pub struct CallbackGate {
    cache: Mutex<HashMap<[u8; 20], Entry>>,
}

/// What a callback is asked about.
pub struct Question<'a> {
    pub policy: &'a str,
    pub instance: &'a str,
    /// The client's request target (`X-Original-URI`).
    pub uri: &'a str,
    /// The configured client headers that were present.
    pub headers: Vec<(String, String)>,
}

impl CallbackGate {
    pub async fn check(
        &self,
        spec: &CallbackSpec,
        question: Question<'_>,
        client: &UpstreamClient,
    ) -> Result<Grant, Denial> {
        let key = identity_key(question.instance, &question.headers);
        let decision = self.entry(key, spec);
        let outcome = decision
            .get_or_init(|| ask(spec, &question, client))
            .await
            .clone();
        if matches!(&outcome, Err(denial) if denial.transient) {
            // A backend failure is not an answer: the next request asks again.
            self.forget(key, &decision);
        }
        outcome.map(|()| Grant {
            expires_at: None,
            recheck: None,
        })
    }

    fn entry(&self, key: [u8; 20], spec: &CallbackSpec) -> Arc<OnceCell<Decision>> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = cache.get(&key) {
            if entry.created.elapsed() < spec.cache_ttl {
                return Arc::clone(&entry.decision);
            }
        }
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, entry| entry.created.elapsed() < spec.cache_ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        let decision = Arc::new(OnceCell::new());
        cache.insert(
            key,
            Entry {
                decision: Arc::clone(&decision),
                created: Instant::now(),
            },
        );
        decision
    }

    fn forget(&self, key: [u8; 20], decision: &Arc<OnceCell<Decision>>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache
            .get(&key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.decision, decision))
        {
            cache.remove(&key);
        }
    }
}

/// A digest of the pair, so the cache holds no credentials.
fn identity_key(instance: &str, headers: &[(String, String)]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(instance.as_bytes());
    for (name, value) in headers {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
    }
    hasher.finalize().into()
}

async fn ask(spec: &CallbackSpec, question: &Question<'_>, client: &UpstreamClient) -> Decision {
    METRICS
        .auth_callback_requests
        .with_label_values(&[question.policy])
        .inc();
    let mut headers = question.headers.clone();
    headers.push(("X-Original-URI".into(), question.uri.to_string()));
    headers.push(("X-Sidestream-Topic".into(), question.instance.to_string()));
    match client
        .get(
            &spec.url,
            &Validators::default(),
            &headers,
            crate::upstream::Traffic::Auth,
        )
        .await
    {
        Ok(response) => match response.meta.status {
            200..=299 => Ok(()),
            401 => Err(Denial::unauthenticated(
                "the auth callback did not recognise the credentials".into(),
            )),
            status @ 400..=499 => Err(Denial::forbidden(format!(
                "the auth callback refused access to {} ({status})",
                question.instance
            ))),
            status => Err(Denial::unavailable(format!(
                "the auth callback answered {status}"
            ))),
        },
        Err(error) => Err(Denial::unavailable(format!("the auth callback failed: {error}"))),
    }
}
