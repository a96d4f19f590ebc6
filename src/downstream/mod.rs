//! Downstream: the client-facing side. Topic paths are served from the hub over the
//! transport the request picks; every other request passes through to the backend.

pub mod in_flight;
pub mod long_poll;
pub mod response;
pub mod router;
pub mod short_poll;
pub mod sse;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EchoSpec, Transport};
use crate::hub::Registry;
use crate::upstream::UpstreamClient;
use in_flight::{InFlight, InFlightGuard};
use response::respond_reason;
use router::{choose_transport, Route, TopicTable};

/// The echo route has no topic settings; its writes get this long.
const ECHO_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client-facing application: one pingora proxy service.
pub struct Sidecar {
    topics: Arc<TopicTable>,
    echo: Option<EchoSpec>,
    registry: Arc<Registry>,
    client: Arc<UpstreamClient>,
    connect_timeout: Duration,
    shutdown: CancellationToken,
    /// SSE streams end spread over this much of the drain window.
    drain_spread: Duration,
    in_flight: Arc<InFlight>,
}

impl Sidecar {
    pub fn new(
        config: &Config,
        topics: Arc<TopicTable>,
        registry: Arc<Registry>,
        client: Arc<UpstreamClient>,
        shutdown: CancellationToken,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Sidecar {
            topics,
            echo: config.websocket_echo.clone(),
            registry,
            client,
            connect_timeout: config.upstream.connect_timeout,
            shutdown,
            // Half the window: the rest is for the spread clients' final writes and for
            // requests still in flight.
            drain_spread: config.server.drain_timeout / 2,
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
        let key = route
            .key
            .with_forwarded(router::forwarded_headers(session.req_header(), spec));
        let topic = self.registry.get_or_create(&key, || spec.hub.clone());
        match transport {
            Transport::Sse => {
                let drain = sse::Drain {
                    signal: &self.shutdown,
                    spread: self.drain_spread,
                };
                sse::serve(session, topic, spec, &drain).await
            }
            // The rarer, larger futures are boxed: a match holds its largest arm inline, and
            // every held SSE stream would otherwise carry the WebSocket state (~10 KiB).
            Transport::LongPoll => Box::pin(long_poll::serve(session, topic, spec, &self.shutdown)).await,
            Transport::ShortPoll => short_poll::serve(session, topic, spec).await,
            Transport::Websocket => {
                let target = websocket::Target::topic(topic, &self.client, spec.websocket.inbound.as_ref());
                Box::pin(websocket::serve(
                    session,
                    target,
                    &spec.websocket,
                    spec.write_timeout,
                    &self.shutdown,
                ))
                .await
            }
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
        Ok(Box::new(self.client.backend().peer(self.connect_timeout)))
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut InFlightGuard) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        if let Some(echo) = self.echo.as_ref().filter(|echo| echo.path == path) {
            Box::pin(websocket::serve(
                session,
                websocket::Target::Echo,
                &echo.websocket,
                ECHO_WRITE_TIMEOUT,
                &self.shutdown,
            ))
            .await?;
            return Ok(true);
        }
        let router = self.topics.current();
        let Some(route) = router.route(&path) else {
            return Ok(false);
        };
        self.serve_topic(session, route).await?;
        Ok(true)
    }
}
