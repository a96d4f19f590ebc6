//! WebSocket on a topic's URL (and on the optional echo route): the upgrade is answered
//! through pingora, then the raw connection goes to yawc for framing, masking, fragments,
//! UTF-8 checks, inflating and the close handshake. Hub messages bypass yawc's per-client
//! compressor: their frames are encoded and deflated once per message (see `io`).

mod close;
mod connection;
mod direct_sink;
pub mod handshake;
mod inbound;
mod io;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pingora_core::protocols::http::ServerSession;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio_util::sync::CancellationToken;

use super::in_flight::InFlightGuard;
use super::response::{respond_reason, sse_resume, take_connection};
use crate::config::{UrlTemplate, WebsocketSpec};
use crate::hub::{Resume, Topic};
use crate::upstream::UpstreamClient;
use connection::{Connection, Feed};
pub use inbound::Inbound;

/// What the connection serves.
pub enum Target {
    Topic {
        topic: Arc<Topic>,
        inbound: Option<Inbound>,
    },
    /// Conformance testing: every message comes straight back.
    Echo,
}

impl Target {
    pub fn topic(topic: Arc<Topic>, client: &Arc<UpstreamClient>, inbound: Option<&UrlTemplate>) -> Self {
        let inbound = inbound.map(|template| Inbound {
            client: client.clone(),
            url: template.render(&topic.key().params),
            headers: Vec::new(),
        });
        Target::Topic { topic, inbound }
    }
}

/// Request headers that belong to this hop or to the WebSocket handshake, not to the
/// backend that receives a client's messages.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "content-type",
    "proxy-authorization",
    "proxy-connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "accept-encoding",
    // Who the client is, as the client claims it: a backend would read a spoofed first
    // value. sidestream writes the one `X-Forwarded-For` (the TCP peer) itself.
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// Answers a WebSocket upgrade: handshake checks, subscription, `101`, then the connection
/// is taken out of pingora and served by its own task.
pub async fn serve(
    session: &mut Session,
    mut target: Target,
    spec: &WebsocketSpec,
    write_timeout: Duration,
    shutdown: &CancellationToken,
    expiry: Option<super::auth::Expiry>,
    in_flight: InFlightGuard,
) -> Result<()> {
    let accepted = match handshake::accept(session.req_header(), spec.deflate, &spec.subprotocols) {
        Ok(accepted) => accepted,
        Err(rejection) => {
            let extra = if rejection.status == 426 {
                vec![("Sec-WebSocket-Version", "13".to_string())]
            } else {
                Vec::new()
            };
            return respond_reason(session, rejection.status, &rejection.reason, &extra).await;
        }
    };
    if let Target::Topic {
        inbound: Some(inbound),
        ..
    } = &mut target
    {
        inbound.headers = forwarded_headers(session);
    }
    // Subscribe before answering, so that nothing published during the handshake is missed.
    let feed = match target {
        Target::Topic { topic, inbound } => {
            // `?cursor=` and `?last_event_id=` resume, as for the other transports.
            let resume = match super::router::query_param(session.req_header(), "cursor") {
                Some(token) => {
                    super::response::parse_cursor_token(&token).map_or(Resume::Unknown, Resume::After)
                }
                None => sse_resume(session.req_header()),
            };
            // `?delta=json-patch` needs the JSON envelope: raw payloads cannot say "patch".
            let deltas = match super::delta::requested(session.req_header(), topic.settings().deltas) {
                Ok(deltas) => deltas && spec.envelope == crate::config::Envelope::Json,
                Err(reason) => return respond_reason(session, 400, &reason, &[]).await,
            };
            let (subscribed, deltas) = if deltas {
                let (subscribed, deltas) = topic.subscribe_deltas(resume);
                (subscribed, Some(deltas))
            } else {
                (topic.subscribe(resume), None)
            };
            Feed::Topic {
                subscribed,
                inbound: inbound.map(Arc::new),
                deltas,
            }
        }
        Target::Echo => Feed::Echo,
    };

    let mut response = ResponseHeader::build(101, Some(5))?;
    response.insert_header("Upgrade", "websocket")?;
    response.insert_header("Connection", "Upgrade")?;
    response.insert_header("Sec-WebSocket-Accept", accepted.accept.as_str())?;
    if let Some(deflate) = &accepted.deflate {
        response.insert_header("Sec-WebSocket-Extensions", deflate.response.as_str())?;
    }
    if let Some(subprotocol) = &accepted.subprotocol {
        response.insert_header("Sec-WebSocket-Protocol", subprotocol.as_str())?;
    }
    session.write_response_header(Box::new(response), false).await?;

    // Take the connection out of pingora; from here on it is a WebSocket.
    let stream = match *take_connection(session) {
        ServerSession::H1(http1) => http1.into_inner(),
        _ => return Ok(()),
    };
    let connection = match Connection::new(
        stream,
        accepted.deflate.as_ref(),
        spec,
        write_timeout,
        feed,
        expiry,
    ) {
        Ok(connection) => connection,
        Err(error) => {
            tracing::warn!("WebSocket setup failed: {error}");
            return Ok(());
        }
    };
    // The connection lives on in a task of its own, as SSE streams do: pingora's request
    // state is released, and the task keeps the drain waiting and the connection counted.
    // The guards ride on the run future (`map`) rather than in an async block around it: a
    // block that owned the `Connection` and awaited its run future held the connection
    // twice (the task was 4.5 KiB that way: the 1.2 KiB connection plus the 3.3 KiB run
    // future that holds it too; now it is the run future's 3.3 KiB).
    let ticket = super::connection_limit::hold_connection();
    tokio::spawn(connection.run(shutdown.clone()).map(move |()| {
        drop(in_flight);
        drop(ticket);
    }));
    Ok(())
}

fn forwarded_headers(session: &Session) -> Vec<(String, String)> {
    let request = session.req_header();
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter(|(name, _)| !NOT_FORWARDED.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    if let Some(address) = session.client_addr().and_then(|a| a.as_inet()) {
        headers.push(("X-Forwarded-For".to_string(), address.ip().to_string()));
    }
    headers
}
