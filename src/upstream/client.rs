//! The backend HTTP client: pingora's pooled `Connector`, the backend budget (a shared token
//! bucket), per traffic class concurrency permits and circuit breakers, a whole-request
//! timeout and a body size limit.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::budget::{Budget, Priority, Share};
use super::circuit::{CircuitBreaker, Permission};
use crate::config::UpstreamSettings;
use crate::metrics::METRICS;

/// What a request is for. Each class has its own concurrency permits and circuit breaker,
/// so that clients (auth, inbound messages) cannot take the backend away from the topics and
/// a failing topic source does not lock clients out of auth; all share the one budget, of
/// which auth and inbound together may use at most half ([`Share::Clients`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// A topic instance's poll or stream; `held`: someone is subscribed to it (SSE,
    /// WebSocket, long poll), which puts it before instances only short polls keep alive.
    Topic { held: bool },
    /// An auth callback or a JWKS fetch.
    Auth,
    /// A client's WebSocket message POSTed to the topic's inbound URL.
    Inbound,
}

impl Traffic {
    fn class(self) -> usize {
        match self {
            Traffic::Topic { .. } => 0,
            Traffic::Auth => 1,
            Traffic::Inbound => 2,
        }
    }

    fn name(self) -> &'static str {
        CLASS_NAMES[self.class()]
    }

    fn priority(self) -> Priority {
        match self {
            Traffic::Auth => Priority::Auth,
            Traffic::Topic { held: true } | Traffic::Inbound => Priority::Held,
            Traffic::Topic { held: false } => Priority::Idle,
        }
    }
}

const CLASS_NAMES: [&str; 3] = ["topic", "auth", "inbound"];

/// Counts a request refused before sending.
fn refuse(traffic: Traffic, reason: &str) {
    METRICS
        .upstream_refusals
        .with_label_values(&[traffic.name(), reason])
        .inc();
}

/// One traffic class's share of the backend.
struct Class {
    permits: Semaphore,
    breaker: CircuitBreaker,
}

/// The backend as resolved at start-up.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `Host` header for requests sidestream makes itself.
    pub host: String,
    /// Prefix of every backend path (from `base_url`).
    pub path_prefix: String,
}

impl Backend {
    /// Resolves `upstream.authority` once; a sidecar's backend is pod-local and stable.
    pub fn resolve(settings: &UpstreamSettings) -> std::io::Result<Self> {
        use std::net::ToSocketAddrs;
        let addr =
            settings.authority.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::other(format!("{} resolves to no address", settings.authority))
            })?;
        Ok(Backend {
            addr,
            host: settings.authority.clone(),
            path_prefix: settings.path_prefix.clone(),
        })
    }

    pub fn peer(&self, connect_timeout: Duration) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, false, String::new());
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer
    }
}

/// Validators from the previous response, sent back to make the request conditional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A whole backend response: what its header said, and its body.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub meta: ResponseMeta,
    pub body: Bytes,
}

/// The parts of a response header sidestream acts on.
#[derive(Debug)]
pub struct ResponseMeta {
    pub status: u16,
    pub validators: Validators,
    pub content_type: Option<String>,
    /// How long the backend asked to be left alone: `Retry-After` (seconds) or
    /// `Cache-Control: max-age`, whichever is longer.
    pub min_interval: Option<Duration>,
}

impl ResponseMeta {
    fn of(header: &pingora_http::ResponseHeader) -> Self {
        let text = |name: &str| {
            header
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = text("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let max_age = text("cache-control").and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        });
        ResponseMeta {
            status: header.status.as_u16(),
            validators: Validators {
                etag: text("etag"),
                last_modified: text("last-modified"),
            },
            content_type: text("content-type"),
            min_interval: retry_after
                .max(max_age)
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }
}

/// An open streaming response; dropping it closes the connection.
pub struct UpstreamStream {
    session: pingora_core::protocols::http::client::HttpSession,
    pub meta: ResponseMeta,
}

impl UpstreamStream {
    /// The next chunk of the body; `None` at its end. Errors include the idle timeout.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        Ok(self.session.read_response_body().await?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("request to the backend failed: {0}")]
    Request(String),
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the backend's body is larger than max_body_bytes ({0})")]
    BodyTooLarge(usize),
    #[error("the backend is failing; the circuit breaker lets a probe through in {0:?}")]
    CircuitOpen(Duration),
    #[error("no {0} request slot to the backend became free within {1:?}")]
    Busy(&'static str, Duration),
}

impl From<Box<pingora_error::Error>> for UpstreamError {
    fn from(error: Box<pingora_error::Error>) -> Self {
        UpstreamError::Request(error.to_string())
    }
}

pub struct UpstreamClient {
    connector: Connector,
    backend: Backend,
    peer: HttpPeer,
    timeout: Duration,
    max_body_bytes: usize,
    budget: Budget,
    /// Indexed by [`Traffic::class`].
    classes: [Class; 3],
    acquire_timeout: Duration,
    max_interval: Duration,
}

impl UpstreamClient {
    pub fn new(backend: Backend, settings: &UpstreamSettings) -> Self {
        UpstreamClient {
            connector: Connector::new(None),
            peer: backend.peer(settings.connect_timeout),
            backend,
            timeout: settings.timeout,
            max_body_bytes: settings.max_body_bytes,
            budget: Budget::new(settings.max_requests_per_second),
            classes: [
                settings.max_concurrent_requests,
                settings.auth_max_concurrent_requests,
                settings.inbound_max_concurrent_requests,
            ]
            .map(|permits| Class {
                permits: Semaphore::new(permits),
                breaker: CircuitBreaker::new(
                    settings.circuit_failure_threshold,
                    settings.circuit_open,
                    settings.backoff_max.max(settings.circuit_open),
                ),
            }),
            acquire_timeout: settings.acquire_timeout,
            max_interval: settings.max_interval,
        }
    }

    /// The cap on how far `max-age`, `Retry-After` or `retry:` may push the next request.
    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }

    /// The backend budget (for tests and admin).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A conditional GET of `path` (below the base URL's prefix).
    pub async fn get(
        &self,
        path: &str,
        validators: &Validators,
        extra: &[(String, String)],
        traffic: Traffic,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = extra.to_vec();
        if let Some(etag) = &validators.etag {
            headers.push(("If-None-Match".to_string(), etag.clone()));
        }
        if let Some(last_modified) = &validators.last_modified {
            headers.push(("If-Modified-Since".to_string(), last_modified.clone()));
        }
        self.send("GET", path, &headers, Bytes::new(), traffic).await
    }

    /// A POST of `body` to `path` with `headers` (e.g. a WebSocket client's message).
    pub async fn post(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
        traffic: Traffic,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send("POST", path, headers, body, traffic).await
    }

    /// Opens a streaming GET. The concurrency permit and the timeout cover only the way to
    /// the response header: a held stream is not a request in flight. `idle_timeout` bounds
    /// the wait for each later chunk.
    pub async fn open_stream(
        &self,
        path: &str,
        headers: &[(String, String)],
        idle_timeout: Duration,
        traffic: Traffic,
    ) -> Result<UpstreamStream, UpstreamError> {
        let open = async {
            let (mut session, meta) = self.start("GET", path, headers, Bytes::new()).await?;
            session.set_read_timeout(Some(idle_timeout));
            Ok(UpstreamStream { session, meta })
        };
        self.guarded(traffic, open, |stream| stream.meta.status).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
        traffic: Traffic,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.guarded(traffic, self.send_unbounded(method, path, headers, body), |r| {
            r.meta.status
        })
        .await
    }

    /// Runs one exchange under its class's circuit breaker and concurrency cap, the shared
    /// budget and the timeout, and tells the breaker how it went.
    ///
    /// Order: a cheap breaker check (fail fast), the permit and the budget, then the breaker's
    /// real permission, right before sending, so a probe is never granted to a request that
    /// then queues.
    ///
    /// Auth and inbound take their permit first: at most their class's permits wait for the
    /// budget (the permits bound their queue), and no budget token goes to a request that
    /// then fails for lack of a permit. Topics take the budget first: its queue puts held
    /// instances before idle ones, which a first-come-first-served permit taken first (and
    /// held through an unbounded budget wait) would undo; each instance queues only once.
    async fn guarded<T>(
        &self,
        traffic: Traffic,
        exchange: impl std::future::Future<Output = Result<T, UpstreamError>>,
        status: impl Fn(&T) -> u16,
    ) -> Result<T, UpstreamError> {
        let class = &self.classes[traffic.class()];
        let refuse = |reason: &str| refuse(traffic, reason);
        if let Some(wait) = class.breaker.refusing() {
            refuse("circuit_open");
            return Err(UpstreamError::CircuitOpen(wait));
        }
        let _permit = match traffic {
            // A topic instance's wait for the budget is its interval stretching (metered);
            // it always ends, as the bucket refills.
            Traffic::Topic { .. } => {
                self.budget.acquire(traffic.priority(), Share::Topics).await;
                self.permit(class, traffic).await?
            }
            // A client waits on these: give up rather than hang.
            Traffic::Auth | Traffic::Inbound => {
                let permit = self.permit(class, traffic).await?;
                let budget = self.budget.acquire(traffic.priority(), Share::Clients);
                if tokio::time::timeout(self.acquire_timeout, budget).await.is_err() {
                    refuse("no_budget");
                    return Err(UpstreamError::Busy(traffic.name(), self.acquire_timeout));
                }
                permit
            }
        };
        let attempt = match class.breaker.permission() {
            Permission::Go(attempt) => attempt,
            Permission::Refused(wait) => {
                refuse("circuit_open");
                return Err(UpstreamError::CircuitOpen(wait));
            }
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))
            .and_then(|result| result);
        if Self::failed(traffic, result.as_ref().map(&status)) {
            attempt.failure();
        } else {
            attempt.success();
        }
        result
    }

    /// One of `class`'s concurrency permits, waited for at most `acquire_timeout`.
    async fn permit<'a>(
        &self,
        class: &'a Class,
        traffic: Traffic,
    ) -> Result<SemaphorePermit<'a>, UpstreamError> {
        match tokio::time::timeout(self.acquire_timeout, class.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(UpstreamError::Request("client is shutting down".into())),
            Err(_) => {
                refuse(traffic, "no_permit");
                Err(UpstreamError::Busy(traffic.name(), self.acquire_timeout))
            }
        }
    }

    /// What the breaker counts as a failure: transport errors, timeouts and, for topics, 5xx.
    /// For auth callbacks and inbound POSTs a 5xx is the backend's answer to one client's
    /// request (which that client may have crafted to fail, e.g. with a malformed cookie):
    /// only a backend that cannot be reached counts.
    fn failed(traffic: Traffic, outcome: Result<u16, &UpstreamError>) -> bool {
        match outcome {
            Ok(status) if status < 500 => false,
            Ok(_) => matches!(traffic, Traffic::Topic { .. }),
            Err(UpstreamError::BodyTooLarge(_)) => false,
            Err(_) => true,
        }
    }

    /// Whether the topics' breaker currently keeps their requests from the backend.
    pub fn circuit_open(&self) -> bool {
        self.classes[Traffic::Topic { held: true }.class()]
            .breaker
            .is_open()
    }

    /// Sends the request (and its body) and reads the response header.
    async fn start(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<(pingora_core::protocols::http::client::HttpSession, ResponseMeta), UpstreamError> {
        let target = format!("{}{}", self.backend.path_prefix, path);
        let (mut session, _reused) = self.connector.get_http_session(&self.peer).await?;
        let mut request = RequestHeader::build(method, target.as_bytes(), None)?;
        for (name, value) in headers {
            request.append_header(name.clone(), value.as_str())?;
        }
        request.insert_header("Host", self.backend.host.as_str())?;
        if request.headers.get("user-agent").is_none() {
            request.insert_header("User-Agent", concat!("sidestream/", env!("CARGO_PKG_VERSION")))?;
        }
        if method != "GET" {
            request.insert_header("Content-Length", body.len())?;
        }
        session.write_request_header(Box::new(request)).await?;
        if !body.is_empty() {
            session.write_request_body(body, true).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let meta = ResponseMeta::of(
            session
                .response_header()
                .ok_or_else(|| UpstreamError::Request("no response header".into()))?,
        );
        Ok((session, meta))
    }

    async fn send_unbounded(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut session, meta) = self.start(method, path, headers, body).await?;
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() + chunk.len() > self.max_body_bytes {
                // The rest of the body is never read, so this connection cannot be reused.
                return Err(UpstreamError::BodyTooLarge(self.max_body_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &self.peer, Some(Duration::from_secs(60)))
            .await;
        Ok(UpstreamResponse {
            meta,
            body: body.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A client whose backend is never reached: the tests run `guarded` with their own
    /// exchanges.
    fn client(upstream: &str) -> Arc<UpstreamClient> {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:9\"\ncircuit_failure_threshold = 3\n\
             {upstream}\n\n[[topic]]\nname = \"t\"\npath = \"/t\"\n\
             source.poll = {{ url = \"/t-src\", interval_ms = 1000 }}\n"
        );
        let config = crate::config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let backend = Backend::resolve(&config.upstream).unwrap();
        Arc::new(UpstreamClient::new(backend, &config.upstream))
    }

    async fn answer(client: &UpstreamClient, traffic: Traffic, status: u16) {
        let result = client.guarded(traffic, async { Ok(status) }, |s| *s).await;
        assert_eq!(result.unwrap(), status);
    }

    #[tokio::test(start_paused = true)]
    async fn an_auth_5xx_is_no_breaker_failure_but_a_timeout_is() {
        let client = client("timeout_ms = 100");
        for _ in 0..10 {
            answer(&client, Traffic::Auth, 500).await;
            answer(&client, Traffic::Inbound, 503).await;
        }
        assert!(client.classes[Traffic::Auth.class()].breaker.refusing().is_none());
        assert!(client.classes[Traffic::Inbound.class()]
            .breaker
            .refusing()
            .is_none());
        for _ in 0..3 {
            let hang = std::future::pending::<Result<u16, UpstreamError>>();
            let result = client.guarded(Traffic::Auth, hang, |s| *s).await;
            assert!(matches!(result, Err(UpstreamError::Timeout(_))), "{result:?}");
        }
        assert!(client.classes[Traffic::Auth.class()].breaker.refusing().is_some());
        // Topics' 5xx still count.
        for _ in 0..3 {
            answer(&client, Traffic::Topic { held: true }, 500).await;
        }
        assert!(client.circuit_open());
    }

    #[tokio::test(start_paused = true)]
    async fn only_permit_holders_wait_for_the_budget_and_the_rest_spend_no_token() {
        let client = client(
            "max_requests_per_second = 1\nauth_max_concurrent_requests = 1\n\
             inbound_max_concurrent_requests = 2\nacquire_timeout_ms = 500\ntimeout_ms = 100000",
        );
        // The one burst token goes to an auth request that keeps the one auth permit.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let client = client.clone();
            async move {
                let exchange = async {
                    let _ = released.await;
                    Ok(200)
                };
                client.guarded(Traffic::Auth, exchange, |s| *s).await
            }
        });
        tokio::task::yield_now().await;
        let requests: Vec<_> = (0..10)
            .map(|n| {
                let client = client.clone();
                let traffic = if n % 2 == 0 {
                    Traffic::Auth
                } else {
                    Traffic::Inbound
                };
                tokio::spawn(async move { client.guarded(traffic, async { Ok(200) }, |s| *s).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let waiting = client.budget().waiting();
        assert_eq!(
            waiting,
            [0, 2, 0],
            "only the inbound permits' holders wait for the budget"
        );
        for request in requests {
            let result = request.await.unwrap();
            assert!(matches!(result, Err(UpstreamError::Busy(..))), "{result:?}");
        }
        // Both halves of the budget have refilled; an auth request finding no permit
        // leaves them for the next request.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let result = client.guarded(Traffic::Auth, async { Ok(200) }, |s| *s).await;
        assert!(
            matches!(result, Err(UpstreamError::Busy("auth", _))),
            "{result:?}"
        );
        let waited = client.budget().acquire(Priority::Auth, Share::Clients).await;
        assert_eq!(
            waited,
            Duration::ZERO,
            "no token was spent on the refused request"
        );
        let _ = release.send(());
        holder.await.unwrap().unwrap();
    }
}
