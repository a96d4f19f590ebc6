//! Downstream: the client-facing side. Topic paths are served from the hub over the
//! transport the request picks; every other request passes through to the backend.

pub mod auth;
pub mod canonical;
pub mod connection_limit;
pub mod cors;
pub mod delta;
pub mod direct;
pub mod header_budget;
pub mod in_flight;
pub mod instance_quota;
pub mod long_poll;
pub mod next_poll;
pub mod per_ip;
pub mod request_head;
pub mod response;
pub mod router;
pub mod shield;
pub mod short_poll;
pub mod sse;
pub mod sse_lane;
pub mod websocket;
pub mod wire;
pub mod write_buffer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, CorsSettings, EchoSpec, Limits, TopicSpec, Transport};
use crate::hub::Registry;
use crate::metrics::METRICS;
use crate::upstream::UpstreamClient;
use auth::{Denial, Gatekeeper};
use in_flight::{InFlight, InFlightGuard};
use instance_quota::{InstanceQuota, QuotaRefusal};
use per_ip::PerIp;
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
    gatekeeper: Gatekeeper,
    limits: Limits,
    cors: Arc<CorsSettings>,
    long_polls: Arc<PerIp>,
    instance_quota: InstanceQuota,
    /// Reads the next request on a held long poll's connection (`next_poll`).
    poll_lane: Arc<next_poll::PollLane>,
}

/// Response headers of a refusal that asks the client to come back later.
fn retry_after(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    vec![("Retry-After", spec.retry.as_secs().max(1).to_string())]
}

/// Request line plus header lines, as sent.
fn request_header_bytes(request: &RequestHeader) -> usize {
    // The request target as sent: `path?query` measured without formatting the URI (the
    // usual origin form), an absolute-form target (with scheme and host) formatted.
    let target = match (request.uri.scheme(), request.uri.path_and_query()) {
        (None, Some(target)) => target.as_str().len(),
        _ => request.uri.to_string().len(),
    };
    let line = request.method.as_str().len() + target + 11;
    let headers: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers
}

impl Sidecar {
    /// What reads requests off pingora's request path: the next long poll on a held poll's
    /// connection, and a new SSE stream's request (`connection_limit`).
    pub fn lane(&self) -> Arc<next_poll::PollLane> {
        Arc::clone(&self.poll_lane)
    }

    pub fn new(
        config: &Config,
        topics: Arc<TopicTable>,
        registry: Arc<Registry>,
        client: Arc<UpstreamClient>,
        shutdown: CancellationToken,
        in_flight: Arc<InFlight>,
    ) -> Self {
        let cors = Arc::new(config.cors.clone());
        let long_polls = Arc::new(PerIp::default());
        let poll_lane = Arc::new(next_poll::PollLane {
            topics: Arc::clone(&topics),
            registry: Arc::clone(&registry),
            long_polls: Arc::clone(&long_polls),
            in_flight: Arc::clone(&in_flight),
            cors: Arc::clone(&cors),
            limits: config.limits.clone(),
            shutdown: shutdown.clone(),
            echo_path: config.websocket_echo.as_ref().map(|echo| echo.path.clone()),
            drain_spread: config.server.drain_timeout / 2,
        });
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
            gatekeeper: Gatekeeper::default(),
            limits: config.limits.clone(),
            cors,
            long_polls,
            instance_quota: InstanceQuota::new(
                config.limits.max_topic_instances_per_client,
                config.limits.topic_instance_creations_per_client_per_minute,
            ),
            poll_lane,
        }
    }

    /// A request that cannot be served now but may be later: each transport its own way.
    async fn refuse_for_now(
        &self,
        session: &mut Session,
        transport: Transport,
        spec: &TopicSpec,
        reason: &str,
    ) -> Result<()> {
        match transport {
            Transport::Sse => sse::retry_later(session, spec.retry, reason).await,
            _ => respond_reason(session, 503, reason, &retry_after(spec)).await,
        }
    }

    /// Over a client's share of instances: `429` + `Retry-After` (SSE: `200` + `retry:` +
    /// end, which an `EventSource` survives).
    async fn refuse_over_quota(
        &self,
        session: &mut Session,
        transport: Transport,
        spec: &TopicSpec,
        refusal: QuotaRefusal,
    ) -> Result<()> {
        METRICS
            .limit_hits
            .with_label_values(&[refusal.limit.as_str()])
            .inc();
        let retry = refusal
            .retry_after
            .map_or(spec.retry, |wait| wait.max(spec.retry));
        match transport {
            Transport::Sse => sse::retry_later(session, retry, &refusal.reason).await,
            _ => {
                let seconds = retry.as_secs_f64().ceil().max(1.0) as u64;
                respond_reason(
                    session,
                    429,
                    &refusal.reason,
                    &[("Retry-After", seconds.to_string())],
                )
                .await
            }
        }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        transport: Transport,
        spec: &TopicSpec,
        denial: Denial,
    ) -> Result<()> {
        if denial.transient {
            return self
                .refuse_for_now(session, transport, spec, &denial.reason)
                .await;
        }
        let extra = if denial.status == 401 {
            vec![("WWW-Authenticate", "Bearer realm=\"sidestream\"".to_string())]
        } else {
            Vec::new()
        };
        respond_reason(session, denial.status, &denial.reason, &extra).await
    }

    async fn serve_topic(&self, session: &mut Session, route: Route<'_>) -> Result<()> {
        let method = &session.req_header().method;
        if method == http::Method::OPTIONS {
            let headers = cors::preflight_headers(&self.cors);
            let mut response = pingora_http::ResponseHeader::build(204, Some(headers.len() + 1))?;
            for (name, value) in headers {
                response.insert_header(name, value)?;
            }
            return response::respond(session, response, bytes::Bytes::new()).await;
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            let reason = format!("{method} is not allowed on topic {}; use GET", route.spec.name);
            return respond_reason(session, 405, &reason, &[("Allow", "GET, HEAD".into())]).await;
        }
        let transport = match choose_transport(session.req_header(), route.spec) {
            Ok(transport) => transport,
            Err(refusal) => return respond_reason(session, refusal.status, &refusal.reason, &[]).await,
        };
        let spec = route.spec;
        if transport == Transport::Websocket {
            // Browsers send `Origin` on every WebSocket, and the user's cookies with it; a page
            // from elsewhere is refused before the upgrade (cross-site WebSocket hijacking).
            // No `Origin` is a non-browser client, which carries no ambient credentials.
            let request = session.req_header();
            let cookie_auth = spec.auth.as_deref().is_some_and(auth::cookie_borne);
            if let Some(origin) = router::header(request, "origin") {
                if !cors::websocket_origin_allowed(&self.cors, origin, request, cookie_auth) {
                    METRICS.origin_refusals.inc();
                    return respond_reason(session, 403, "this Origin may not open WebSockets here", &[])
                        .await;
                }
            }
        }
        let expiry = match &spec.auth {
            Some(policy) => {
                let instance = route.key.to_string();
                // Boxed: the check (JWKS fetch, callback request) is a large future, and
                // inline it would enlarge every held stream's future.
                let admit = self
                    .gatekeeper
                    .admit(policy, session.req_header(), &instance, &self.client);
                match Box::pin(admit).await {
                    Ok(grant) => auth::Expiry::new(&grant, policy),
                    Err(denial) => return self.refuse(session, transport, spec, denial).await,
                }
            }
            None => None,
        };
        // Authenticated answers are for this user only (`Cache-Control: private`).
        let private = spec.auth.is_some();
        let forwarded = router::forwarded_headers(session.req_header(), spec);
        let key = route.key.with_forwarded(forwarded.clone());
        // A new instance is paid for from the client's share; joining one never is. At the
        // global cap nothing is created, so nothing is charged (the cap answers below).
        let mut new_instance_for = None;
        if self.registry.get(&key).is_none() && self.registry.len() < self.limits.max_topic_instances {
            let ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
            let clients = self.instance_quota.clients(ip, &forwarded);
            if let Err(refusal) = self.instance_quota.admit(&clients) {
                return self.refuse_over_quota(session, transport, spec, refusal).await;
            }
            new_instance_for = Some(clients);
        }
        let Some(topic) = self
            .registry
            .try_get_or_create(&key, self.limits.max_topic_instances, || spec.hub.clone())
        else {
            METRICS.limit_hits.with_label_values(&["topic_instances"]).inc();
            let reason = "too many topic instances are live; try again later";
            return self.refuse_for_now(session, transport, spec, reason).await;
        };
        if let Some(clients) = new_instance_for {
            self.instance_quota.charge(&clients, &topic);
        }
        // A clustered instance first loads the shared history, so a resume cursor from
        // another sidecar is known here too. Bounded: a slow Redis degrades to local data.
        topic.wait_synced(SYNC_WAIT).await;
        match transport {
            Transport::Sse => {
                let drain = sse::Drain {
                    signal: self.shutdown.clone(),
                    spread: self.drain_spread,
                };
                let in_flight = self.in_flight.enter();
                sse::serve(session, topic, spec, &drain, expiry, in_flight, private).await
            }
            // The rarer, larger futures are boxed: a match holds its largest arm inline, and
            // every held SSE stream would otherwise carry the WebSocket state (~10 KiB).
            Transport::LongPoll => {
                let ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
                let ip_slot = match ip {
                    Some(ip) => match self.long_polls.acquire(ip, self.limits.max_long_polls_per_ip) {
                        Some(slot) => Some(slot),
                        None => {
                            METRICS.limit_hits.with_label_values(&["long_polls_per_ip"]).inc();
                            let reason = format!(
                                "too many long polls held from this address (limit {})",
                                self.limits.max_long_polls_per_ip
                            );
                            return respond_reason(session, 429, &reason, &retry_after(spec)).await;
                        }
                    },
                    None => None,
                };
                let ticket = long_poll::HoldTicket {
                    in_flight: self.in_flight.enter(),
                    ip_slot,
                };
                Box::pin(long_poll::serve(
                    session,
                    topic,
                    spec,
                    &self.poll_lane,
                    private,
                    ticket,
                ))
                .await
            }
            Transport::ShortPoll => short_poll::serve(session, topic, spec, private).await,
            Transport::Websocket => {
                let target = websocket::Target::topic(topic, &self.client, spec.websocket.inbound.as_ref());
                Box::pin(websocket::serve(
                    session,
                    target,
                    &spec.websocket,
                    spec.write_timeout,
                    &self.shutdown,
                    expiry,
                    self.in_flight.enter(),
                ))
                .await
            }
        }
    }
}

/// The longest a request waits for a new clustered instance's first sync.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // No response compression module (pingora's default adds a disabled one): topic
        // responses are pre-encoded and pass-through keeps the backend's encoding.
        if self.cors.enabled() {
            modules.add_module(Box::new(cors::CorsBuilder::new(
                Arc::clone(&self.cors),
                Arc::clone(&self.topics),
            )));
        }
    }

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut InFlightGuard) -> Result<()> {
        connection_limit::mark_header_complete();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut InFlightGuard) -> Result<bool> {
        let header_bytes = request_header_bytes(session.req_header());
        if header_bytes > self.limits.max_request_header_bytes {
            METRICS
                .limit_hits
                .with_label_values(&["request_header_bytes"])
                .inc();
            let reason = format!(
                "the request header is {header_bytes} bytes; the limit is {}",
                self.limits.max_request_header_bytes
            );
            respond_reason(session, 431, &reason, &[]).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path().to_string();
        if let Some(echo) = self.echo.as_ref().filter(|echo| echo.path == path) {
            Box::pin(websocket::serve(
                session,
                websocket::Target::Echo,
                &echo.websocket,
                ECHO_WRITE_TIMEOUT,
                &self.shutdown,
                None,
                self.in_flight.enter(),
            ))
            .await?;
            return Ok(true);
        }
        if path == "*" {
            // `OPTIONS *` asks about the server, not about any topic or backend resource.
            return Ok(false);
        }
        // Routing and the pass-through shield see one spelling of the path; a spelling that
        // servers read differently is refused, so none can reach a topic's data around it.
        let path = match canonical::CanonicalPath::parse(&path) {
            Ok(path) => path,
            Err(refusal) => {
                METRICS.path_refusals.with_label_values(&[refusal.label()]).inc();
                respond_reason(session, 400, &refusal.to_string(), &[]).await?;
                return Ok(true);
            }
        };
        let router = self.topics.current();
        if let Some(route) = router.route(&path) {
            self.serve_topic(session, route).await?;
            return Ok(true);
        }
        if let Some(what) = router.shielded(&path) {
            METRICS.path_refusals.with_label_values(&["shielded"]).inc();
            let reason =
                format!("this path is the backend's {what}, which has auth: read it through the topic");
            respond_reason(session, 403, &reason, &[]).await?;
            return Ok(true);
        }
        Ok(false)
    }
}
