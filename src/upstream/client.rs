//! The backend HTTP client: pingora's pooled `Connector`, a global concurrency cap, a
//! whole-request timeout and a body size limit.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use tokio::sync::Semaphore;

use super::circuit::{CircuitBreaker, Permission};
use crate::config::UpstreamSettings;

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
    permits: Semaphore,
    breaker: CircuitBreaker,
}

impl UpstreamClient {
    pub fn new(backend: Backend, settings: &UpstreamSettings) -> Self {
        UpstreamClient {
            connector: Connector::new(None),
            peer: backend.peer(settings.connect_timeout),
            backend,
            timeout: settings.timeout,
            max_body_bytes: settings.max_body_bytes,
            permits: Semaphore::new(settings.max_concurrent_requests),
            breaker: CircuitBreaker::new(
                settings.circuit_failure_threshold,
                settings.circuit_open,
                settings.backoff_max.max(settings.circuit_open),
            ),
        }
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
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = extra.to_vec();
        if let Some(etag) = &validators.etag {
            headers.push(("If-None-Match".to_string(), etag.clone()));
        }
        if let Some(last_modified) = &validators.last_modified {
            headers.push(("If-Modified-Since".to_string(), last_modified.clone()));
        }
        self.send("GET", path, &headers, Bytes::new()).await
    }

    /// A POST of `body` to `path` with `headers` (e.g. a WebSocket client's message).
    pub async fn post(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send("POST", path, headers, body).await
    }

    /// Opens a streaming GET. The concurrency permit and the timeout cover only the way to
    /// the response header: a held stream is not a request in flight. `idle_timeout` bounds
    /// the wait for each later chunk.
    pub async fn open_stream(
        &self,
        path: &str,
        headers: &[(String, String)],
        idle_timeout: Duration,
    ) -> Result<UpstreamStream, UpstreamError> {
        let open = async {
            let (mut session, meta) = self.start("GET", path, headers, Bytes::new()).await?;
            session.set_read_timeout(Some(idle_timeout));
            Ok(UpstreamStream { session, meta })
        };
        self.guarded(open, |stream| stream.meta.status).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.guarded(self.send_unbounded(method, path, headers, body), |r| {
            r.meta.status
        })
        .await
    }

    /// Runs one exchange under the circuit breaker, the concurrency cap and the timeout, and
    /// tells the breaker how it went.
    async fn guarded<T>(
        &self,
        exchange: impl std::future::Future<Output = Result<T, UpstreamError>>,
        status: impl Fn(&T) -> u16,
    ) -> Result<T, UpstreamError> {
        if let Permission::Refused(wait) = self.breaker.permission() {
            return Err(UpstreamError::CircuitOpen(wait));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| UpstreamError::Request("client is shutting down".into()))?;
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))
            .and_then(|result| result);
        self.record(result.as_ref().map(&status));
        result
    }

    /// Feeds the circuit breaker: transport errors, timeouts and 5xx count as failures.
    fn record(&self, outcome: Result<u16, &UpstreamError>) {
        match outcome {
            Ok(status) if status < 500 => self.breaker.record_success(),
            Err(UpstreamError::BodyTooLarge(_)) => self.breaker.record_success(),
            _ => self.breaker.record_failure(),
        }
    }

    /// Whether the breaker currently keeps requests from the backend.
    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
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
