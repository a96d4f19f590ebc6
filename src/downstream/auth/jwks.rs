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
    /// Short critical sections only: never held across an await.
    state: std::sync::Mutex<State>,
    /// Held by the one request fetching the document (single flight).
    fetching: Mutex<()>,
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
            state: std::sync::Mutex::new(State::default()),
            fetching: Mutex::new(()),
        }
    }

    /// The key for `kid` (or the only key, for tokens without one). A token whose key is
    /// held never waits for a fetch in flight (a refresh due, or another token's unknown
    /// `kid`); only requests that need the fetch's result wait for it.
    pub async fn key(&self, kid: Option<&str>, client: &UpstreamClient) -> KeyLookup {
        let (found, stale, asked) = {
            let state = self.lock();
            (find(&state.keys, kid), self.is_stale(&state), state.fetched_at)
        };
        if let Some(key) = found {
            if stale {
                // Refresh now if nobody is; otherwise the held key serves meanwhile.
                if let Ok(_fetching) = self.fetching.try_lock() {
                    self.fetch_unless_done(asked, client).await;
                }
            }
            return KeyLookup::Found(key);
        }
        // The key is needed from the backend: one fetch at a time, and whoever waited for
        // another's fetch uses its result rather than asking again.
        {
            let _fetching = self.fetching.lock().await;
            let due = {
                let state = self.lock();
                self.is_stale(&state) || state.fetched_at.is_none_or(|at| at.elapsed() >= MIN_REFETCH)
            };
            if due {
                self.fetch_unless_done(asked, client).await;
            }
        }
        let state = self.lock();
        if let Some(key) = find(&state.keys, kid) {
            return KeyLookup::Found(key);
        }
        if state.keys.is_empty() {
            let reason = state.last_error.clone().unwrap_or_else(|| "no keys".into());
            return KeyLookup::Unavailable(format!("signing keys are not available yet: {reason}"));
        }
        KeyLookup::UnknownKid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Due for a fetch: never fetched, the refresh interval is over, or (after a failure)
    /// `MIN_REFETCH` has passed.
    fn is_stale(&self, state: &State) -> bool {
        match (state.loaded_at, state.fetched_at) {
            (_, None) => true,
            (Some(loaded), Some(asked)) if loaded == asked => loaded.elapsed() >= self.refresh,
            (_, Some(asked)) => asked.elapsed() >= MIN_REFETCH,
        }
    }

    /// Fetches (the caller holds `fetching`) unless a fetch finished since `asked` was read.
    /// No lock on the keys is held across the request.
    async fn fetch_unless_done(&self, asked: Option<Instant>, client: &UpstreamClient) {
        if self.lock().fetched_at != asked {
            return;
        }
        let result = self.download(client).await;
        let mut state = self.lock();
        match result {
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
