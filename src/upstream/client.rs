//! The backend HTTP client: pingora's pooled `Connector`, a global concurrency cap, a
//! whole-request timeout and a body size limit.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use tokio::sync::Semaphore;

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

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub validators: Validators,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("request to the backend failed: {0}")]
    Request(String),
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the backend's body is larger than max_body_bytes ({0})")]
    BodyTooLarge(usize),
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
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A conditional GET of `path` (below the base URL's prefix).
    pub async fn get(&self, path: &str, validators: &Validators) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = Vec::new();
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

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| UpstreamError::Request("client is shutting down".into()))?;
        tokio::time::timeout(self.timeout, self.send_unbounded(method, path, headers, body))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }

    async fn send_unbounded(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
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
        let (status, validators, content_type) = {
            let header = session
                .response_header()
                .ok_or_else(|| UpstreamError::Request("no response header".into()))?;
            let text = |name: &str| {
                header
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (
                header.status.as_u16(),
                Validators {
                    etag: text("etag"),
                    last_modified: text("last-modified"),
                },
                text("content-type"),
            )
        };
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
            status,
            validators,
            content_type,
            body: body.freeze(),
        })
    }
}
