//! The admin listener: `/live`, `/ready`, `/metrics`, `/publish/{topic path}` for push
//! topics, and the admin page `/` with its API `/api/topics`. A separate port, meant for the
//! pod's network only.

mod api;
mod auth;
pub mod health;
mod metrics;
mod publish;
pub mod sampler;

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::downstream::router::TopicTable;
use crate::hub::Registry;

pub struct Admin {
    readiness: Arc<health::Readiness>,
    topics: Arc<TopicTable>,
    registry: Arc<Registry>,
    publish_token: Option<crate::config::Secret>,
    publish_max_body_bytes: usize,
    shutdown: CancellationToken,
    /// `[cluster]`: pushes are sequenced in Redis and reach every sidecar's subscribers.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `server.admin_token`: guards the page and `/api/topics`.
    auth: auth::AdminAuth,
    sampler: Arc<sampler::Sampler>,
    started: std::time::Instant,
}

/// The admin page: one self-contained file, no build step, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

impl Admin {
    pub fn new(
        config: &Config,
        topics: Arc<TopicTable>,
        registry: Arc<Registry>,
        readiness: Arc<health::Readiness>,
        shutdown: CancellationToken,
    ) -> Self {
        Admin {
            readiness,
            topics,
            registry,
            publish_token: config.server.publish_token.clone(),
            publish_max_body_bytes: config.server.publish_max_body_bytes,
            shutdown,
            cluster: None,
            auth: auth::AdminAuth::new(config.server.admin_token.clone()),
            sampler: Arc::new(sampler::Sampler::default()),
            started: std::time::Instant::now(),
        }
    }

    /// What samples the instances' totals for the API's rates ([`sampler::Sampler::run`]).
    pub fn sampler(&self) -> Arc<sampler::Sampler> {
        self.sampler.clone()
    }

    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }
}

/// A small text or JSON answer.
fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn text(status: u16, message: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/live") => health::live(),
            ("GET" | "HEAD", "/ready") => health::ready(&self.shutdown, &self.readiness),
            ("GET", "/metrics") => metrics::render(&self.registry),
            ("POST", "/login") => self.auth.login(session).await,
            (_, "/" | "/index.html") | (_, "/api/topics") if !self.auth.allows(session) => {
                self.auth.refuse(!path.starts_with("/api/"))
            }
            (_, api) if api.starts_with("/api/topics/") && !self.auth.allows(session) => self.auth.refuse(false),
            ("GET" | "HEAD", "/" | "/index.html") => reply(200, "text/html; charset=utf-8", PAGE),
            ("GET", "/api/topics") => api::list(self, session.req_header().uri.query()).await,
            ("GET", one) if one.starts_with("/api/topics/") => api::one(self, &one["/api/topics/".len()..]).await,
            ("DELETE", one) if one.starts_with("/api/topics/") => api::close(self, &one["/api/topics/".len()..]),
            ("POST", publish_path) if publish_path.starts_with("/publish/") => {
                publish::handle(self, session, &publish_path["/publish".len()..]).await
            }
            (_, "/live" | "/ready" | "/metrics" | "/" | "/api/topics") => text(405, "use GET"),
            _ => text(
                404,
                "not found: the admin listener serves /, /api/topics[/{id}], /live, /ready, /metrics, POST /publish/{topic path}",
            ),
        }
    }
}
