//! Downstream: the client-facing side. Topic paths are served from the hub over the
//! transport the request picks; every other request passes through to the backend.

pub mod in_flight;
pub mod long_poll;
pub mod response;
pub mod router;
pub mod short_poll;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};
use tokio_util::sync::CancellationToken;

use crate::config::Transport;
use crate::hub::Registry;
use crate::upstream::Backend;
use in_flight::{InFlight, InFlightGuard};
use response::respond_reason;
use router::{choose_transport, Route, Router};

/// The client-facing application: one pingora proxy service.
pub struct Sidecar {
    router: Router,
    registry: Arc<Registry>,
    backend: Backend,
    connect_timeout: Duration,
    shutdown: CancellationToken,
    in_flight: Arc<InFlight>,
}

impl Sidecar {
    pub fn new(
        router: Router,
        registry: Arc<Registry>,
        backend: Backend,
        connect_timeout: Duration,
        shutdown: CancellationToken,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Sidecar {
            router,
            registry,
            backend,
            connect_timeout,
            shutdown,
            in_flight,
        }
    }

    async fn serve_topic(&self, session: &mut Session, route: Route<'_>) -> Result<()> {
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            let reason = format!("{method} is not allowed on topic {}; use GET", route.spec.name);
            return respond_reason(session, 405, &reason, &[("Allow", "GET, HEAD".into())]).await;
        }
        let transport = match choose_transport(session.req_header(), route.spec) {
            Ok(transport) => transport,
            Err(refusal) => return respond_reason(session, refusal.status, &refusal.reason, &[]).await,
        };
        let spec = route.spec;
        let topic = self.registry.get_or_create(&route.key, || spec.hub.clone());
        match transport {
            Transport::Sse => sse::serve(session, topic, spec, &self.shutdown).await,
            Transport::LongPoll => long_poll::serve(session, topic, spec, &self.shutdown).await,
            Transport::ShortPoll => short_poll::serve(session, topic, spec).await,
        }
    }
}

#[async_trait]
impl ProxyHttp for Sidecar {
    /// Lives exactly as long as the request, topic or pass-through, so a drain knows when
    /// the last one is done.
    type CTX = InFlightGuard;

    fn new_ctx(&self) -> Self::CTX {
        self.in_flight.enter()
    }

    /// Everything that is not a topic goes to the backend as it came.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut InFlightGuard) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.backend.peer(self.connect_timeout)))
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut InFlightGuard) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let Some(route) = self.router.route(&path) else {
            return Ok(false);
        };
        self.serve_topic(session, route).await?;
        Ok(true)
    }
}
