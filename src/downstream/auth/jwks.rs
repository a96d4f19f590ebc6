//! A JWKS document fetched from the backend: loaded on first use, refreshed when older than
//! its refresh interval, and re-fetched (at most every few seconds) when a token names a key
//! id it does not hold, so key rotation needs no restart. The last good set is kept while the
//! backend fails.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::upstream::client::Validators;
use crate::upstream::UpstreamClient;

/// A token with an unknown `kid` triggers a re-fetch at most this often.
const MIN_REFETCH: Duration = Duration::from_secs(10);

pub enum KeyLookup {
    Found(Arc<DecodingKey>),
    UnknownKid,
    Unavailable(String),
}

pub struct JwksCache {
    url: String,
    refresh: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Vec<(Option<String>, Arc<DecodingKey>)>,
    /// When the backend was last asked (successfully or not).
    fetched_at: Option<Instant>,
    /// The last fetch succeeded at this time.
    loaded_at: Option<Instant>,
    last_error: Option<String>,
}

impl JwksCache {
    pub fn new(url: String, refresh: Duration) -> Self {
        JwksCache {
            url,
            refresh,
            state: Mutex::new(State::default()),
        }
    }

    /// The key for `kid` (or the only key, for tokens without one).
    pub async fn key(&self, kid: Option<&str>, client: &UpstreamClient) -> KeyLookup {
        // One lock holder fetches; concurrent verifications wait for its result instead of
        // each asking the backend.
        let mut state = self.state.lock().await;
        // After a failure, ask again no sooner than MIN_REFETCH.
        let stale = match (state.loaded_at, state.fetched_at) {
            (_, None) => true,
            (Some(loaded), Some(asked)) if loaded == asked => loaded.elapsed() >= self.refresh,
            (_, Some(asked)) => asked.elapsed() >= MIN_REFETCH,
        };
        if stale {
            self.fetch(&mut state, client).await;
        }
        if let Some(key) = find(&state.keys, kid) {
            return KeyLookup::Found(key);
        }
        let may_refetch = !stale && state.fetched_at.is_none_or(|at| at.elapsed() >= MIN_REFETCH);
        if may_refetch {
            self.fetch(&mut state, client).await;
            if let Some(key) = find(&state.keys, kid) {
                return KeyLookup::Found(key);
            }
        }
        if state.keys.is_empty() {
            let reason = state.last_error.clone().unwrap_or_else(|| "no keys".into());
            return KeyLookup::Unavailable(format!("signing keys are not available yet: {reason}"));
        }
        KeyLookup::UnknownKid
    }

    async fn fetch(&self, state: &mut State, client: &UpstreamClient) {
        match self.download(client).await {
            Ok(keys) => {
                let now = Instant::now();
                state.keys = keys;
                state.fetched_at = Some(now);
                state.loaded_at = Some(now);
                state.last_error = None;
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "JWKS fetch failed; keeping the last good keys");
                state.fetched_at = Some(Instant::now());
                state.last_error = Some(error);
            }
        }
    }

    async fn download(
        &self,
        client: &UpstreamClient,
    ) -> Result<Vec<(Option<String>, Arc<DecodingKey>)>, String> {
        let response = client
            .get(
                &self.url,
                &Validators::default(),
                &[],
                crate::upstream::Traffic::Auth,
            )
            .await
            .map_err(|e| e.to_string())?;
        if response.meta.status != 200 {
            return Err(format!("the backend answered {}", response.meta.status));
        }
        let set: JwkSet =
            serde_json::from_slice(&response.body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<_> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone(), Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err("the JWKS document holds no usable key".into());
        }
        Ok(keys)
    }
}

fn find(keys: &[(Option<String>, Arc<DecodingKey>)], kid: Option<&str>) -> Option<Arc<DecodingKey>> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .map(|(_, key)| Arc::clone(key)),
        None if keys.len() == 1 => Some(Arc::clone(&keys[0].1)),
        None => None,
    }
}
