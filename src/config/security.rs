//! Resolved security settings: subscriber auth policies, CORS, limits, and secrets.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};

/// A secret value. Its `Debug` form shows only a fingerprint keyed per process, so a config
/// can be printed, diffed on reload and logged without the secret ever appearing.
#[derive(Clone)]
pub struct Secret {
    value: Arc<str>,
}

/// Per-process key for fingerprints: two configs in this process compare equal exactly when
/// their secrets do, and the printed value says nothing useful outside it.
static FINGERPRINT_KEY: LazyLock<std::collections::hash_map::RandomState> =
    LazyLock::new(std::collections::hash_map::RandomState::new);

fn fingerprint(bytes: &[u8]) -> u64 {
    FINGERPRINT_KEY.hash_one(bytes)
}

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret { value: value.into() }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:016x})", fingerprint(self.value.as_bytes()))
    }
}

/// `[limits]`: what one client, or all of them together, may take from the process.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open client connections on the main listener; more are refused at accept.
    pub max_connections: usize,
    /// Open client connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Live topic instances; a request that would create one more is refused.
    pub max_topic_instances: usize,
    /// Long polls held at once for one IP address (`429` beyond).
    pub max_long_polls_per_ip: usize,
    /// Live topic instances one client created (a client: its IP address, and separately its
    /// identity, the forwarded header values, on topics with `forward_headers`).
    pub max_topic_instances_per_client: usize,
    /// Topic instances one client may create per minute (a token bucket, bursts included).
    pub topic_instance_creations_per_client_per_minute: usize,
    /// Request line plus headers of any request (`431` beyond).
    pub max_request_header_bytes: usize,
    /// Time to send a complete request header, from the connection's start or the previous
    /// response (idle keep-alive included); the connection is closed beyond.
    pub request_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            // Generous per address: behind an ingress or NAT many clients share one.
            max_connections_per_ip: 2_048,
            max_topic_instances: 10_000,
            max_long_polls_per_ip: 1_024,
            // A page or a dashboard uses a handful of instances; 256 still serves a few dozen
            // such clients behind one NAT, and one client can take at most 1/40 of the
            // global cap. Behind an ingress (one IP for everyone) raise both.
            max_topic_instances_per_client: 256,
            topic_instance_creations_per_client_per_minute: 600,
            max_request_header_bytes: 32 * 1024,
            request_header_timeout: Duration::from_secs(15),
        }
    }
}

/// `[cors]`: browser origins allowed to read topics cross-origin and to open WebSockets.
#[derive(Clone, Debug, Default)]
pub struct CorsSettings {
    /// Lower-cased `scheme://host[:port]` values; empty = no CORS headers and no WebSocket
    /// `Origin` check (same-origin deployments and non-browser clients).
    pub allowed_origins: BTreeSet<String>,
    /// `"*"` was listed: every origin is allowed.
    pub any_origin: bool,
    pub allow_credentials: bool,
    pub preflight_max_age: Duration,
}

impl CorsSettings {
    /// Whether an `Origin` check applies at all.
    pub fn enabled(&self) -> bool {
        self.any_origin || !self.allowed_origins.is_empty()
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.allowed_origins.contains(&origin.to_ascii_lowercase())
    }
}

/// One `[auth.<name>]` policy, shared by every topic that names it.
#[derive(Debug)]
pub struct AuthSpec {
    pub name: Arc<str>,
    pub kind: AuthKind,
}

#[derive(Debug)]
pub enum AuthKind {
    Jwt(JwtSpec),
    Callback(CallbackSpec),
}

#[derive(Debug)]
pub struct JwtSpec {
    /// All from one family, matching the keys.
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    /// Cookie that may carry the token (browsers' EventSource and WebSocket send cookies).
    pub cookie: Option<String>,
    /// Query parameter that may carry the token (EventSource cannot set headers).
    pub query_param: Option<String>,
    /// Claim listing the topic instances the token grants, as glob patterns; `None` = the
    /// token grants every topic of the policy.
    pub topics_claim: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Duration,
    /// End SSE streams and WebSockets when the token expires.
    pub close_on_expiry: bool,
}

pub enum JwtKeys {
    /// A shared secret or a public key, loaded at start-up.
    Static(DecodingKey, u64),
    /// A JWKS document on the backend, fetched at start and every `refresh`.
    Jwks { url: String, refresh: Duration },
}

impl JwtKeys {
    pub fn from_key(key: DecodingKey, material: &[u8]) -> Self {
        JwtKeys::Static(key, fingerprint(material))
    }
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKeys::Static(_, print) => write!(f, "Static({print:016x})"),
            JwtKeys::Jwks { url, refresh } => f
                .debug_struct("Jwks")
                .field("url", url)
                .field("refresh", refresh)
                .finish(),
        }
    }
}

/// auth_request style: the backend decides, the sidecar remembers the answer for a while.
#[derive(Debug)]
pub struct CallbackSpec {
    /// Path on the backend (under `upstream.base_url`).
    pub url: String,
    /// Client headers sent to the callback; their values are the client's identity.
    pub forward_headers: Vec<String>,
    /// How long an allow or deny is reused for the same identity and topic instance.
    pub cache_ttl: Duration,
}
