//! The next request on a connection whose long poll was answered off pingora's request path.
//!
//! A long-poll client asks again at once, on the same connection, for the same topic. That
//! request is read and routed here, not by pingora: pingora's request path (a new session
//! and its buffers, the proxy's state machine, a task per request) was ~20 µs of the ~35 µs
//! of CPU per delivery at 1 000 held polls, where nchan spends ~21 in all (the closing note
//! of session 8 has the profile). What this lane serves is exactly what the request path
//! would serve the same way: a `GET` over HTTP/1.1 without a body to an existing instance of a
//! topic without auth, choosing long poll. Anything else — another path or transport, auth,
//! a new instance, a body, an `Upgrade`, `Connection: close`, HTTP/1.0, a pipelined request,
//! a malformed or oversized head, a bad query — goes to pingora with the bytes already read
//! in front of the stream (`set_pipelined_prefix`), which serves it (or refuses it with its
//! reason) as if it had read them itself.
//!
//! What a head is — the previous poll again (known by its bytes), a poll to route, or none
//! of the lane's — is decided in `poll_head`.

mod poll_head;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_http::RequestHeader;
use tokio_util::sync::CancellationToken;

use super::canonical::CanonicalPath;
use super::connection_limit::ConnectionTicket;
use super::cors::CorsStamp;
use super::in_flight::InFlight;
use super::long_poll::{HoldTicket, PollRequest};
use super::per_ip::PerIp;
use super::request_head::{read_head, Head};
use super::request_header_bytes;
use super::router::{choose_transport, forwarded_headers, query_param, TopicTable};
use crate::config::{CorsSettings, Limits, Transport};
use crate::hub::{Cursor, Registry, Topic};
use crate::metrics::METRICS;
use poll_head::{classify, HeadShape, PollHead};

/// What the lanes (this one and `sse_lane`) need of the proxy: routing, the instances, the
/// per-IP long-poll cap, the drain's count of requests in flight and its spread, CORS, the
/// request limits and the echo endpoint's path (which routing leaves alone).
pub struct PollLane {
    pub topics: Arc<TopicTable>,
    pub registry: Arc<Registry>,
    pub long_polls: Arc<PerIp>,
    pub in_flight: Arc<InFlight>,
    pub cors: Arc<CorsSettings>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub echo_path: Option<String>,
    pub drain_spread: Duration,
}

/// The connection's next request, as read by the lane.
pub enum Next {
    /// A long poll the lane serves.
    Poll(NextPoll),
    /// Anything else: pingora serves it, starting from these bytes already read.
    Pingora(BytesMut),
    /// The client closed, the header deadline struck, the read failed (an oversized header
    /// was refused with `431` by the header budget) or the server is stopping.
    Close,
}

pub struct NextPoll {
    pub topic: Arc<Topic>,
    pub request: PollRequest,
    pub ticket: HoldTicket,
    pub cors: CorsStamp,
    pub write_timeout: Duration,
}

/// What the lane keeps of a connection between its polls: the peer's address, and the last
/// poll it admitted, so that the same request again (a long-poll client repeats its request
/// with only the cursor changed) is admitted without being routed and parsed anew.
#[derive(Default)]
pub struct LaneState {
    peer_ip: Option<Option<IpAddr>>,
    repeat: Option<Repeat>,
}

/// A poll the lane admitted, and what routing it decided. A request with the same target
/// and the same header lines (in order, byte for byte) but for `If-None-Match`, read while
/// the same routing table is current, is routed the same way: routing, transport choice,
/// `wait`, delta format, forwarded headers and CORS read nothing else.
struct Repeat {
    shape: HeadShape,
    /// The routing table's generation it was routed under.
    generation: u64,
    /// The instance it chose, while the registry holds it (an instance leaves the registry
    /// only closed).
    topic: Arc<Topic>,
    wait: Duration,
    deltas: bool,
    /// The cursor the target names (`?cursor=`), which `If-None-Match` does not override.
    query_cursor: Option<Option<Cursor>>,
    cors: CorsStamp,
    /// The request's `Origin` was refused (counted again on every repeat, as a fresh
    /// request would count it).
    origin_refused: bool,
    write_timeout: Duration,
}

impl PollLane {
    /// Reads the connection's next request head (within the header deadline and budget, as
    /// pingora's keep-alive loop would) and decides who serves it.
    pub async fn next(
        &self,
        stream: &mut Stream,
        connection: &ConnectionTicket,
        state: &mut LaneState,
        already_read: BytesMut,
    ) -> Next {
        connection.start_request_after(already_read.len());
        let repeat = state.repeat.as_ref();
        // Not raced against the shutdown (that would register with the token on every poll):
        // a poll arriving while the server stops is answered `304` + `Connection: close` at
        // once by its hold, and an idle connection ends with the process, as pingora's do.
        let read = tokio::time::timeout(
            self.limits.request_header_timeout,
            read_head(
                stream,
                already_read,
                |bytes| repeat.and_then(|repeat| repeat.shape.repeat_of_bytes(bytes)),
                |parsed, head| classify(parsed, head, repeat.map(|repeat| &repeat.shape)),
            ),
        )
        .await;
        let (bytes, length, parsed) = match read {
            Err(_) => {
                METRICS
                    .limit_hits
                    .with_label_values(&["request_header_timeout"])
                    .inc();
                return Next::Close;
            }
            Ok(Head::Close) => return Next::Close,
            Ok(Head::Unparsed(bytes)) => return Next::Pingora(bytes),
            Ok(Head::Complete(bytes, length, parsed)) => (bytes, length, parsed),
        };
        connection.mark_header_complete();
        // Bytes past the head are a pipelined request: pingora's to serve (and close after).
        if bytes.len() != length {
            return Next::Pingora(bytes);
        }
        let ip = *state.peer_ip.get_or_insert_with(|| {
            stream.get_socket_digest().and_then(|digest| {
                digest
                    .peer_addr()
                    .and_then(|addr| addr.as_inet())
                    .map(|addr| addr.ip())
            })
        });
        let admitted = match parsed {
            PollHead::Repeat(cursor, header_bytes, raw) => match state.repeat.as_mut() {
                Some(repeat) => {
                    repeat.shape.learn_raw(raw);
                    self.admit_repeat(repeat, cursor, header_bytes, ip).await
                }
                None => None,
            },
            PollHead::Fresh(request, shape) => self.admit(&request, shape, ip).await.map(|admitted| {
                state.repeat = admitted.repeat;
                admitted.poll
            }),
            PollHead::Other => None,
        };
        match admitted {
            Some(poll) => {
                METRICS.long_polls_read_directly.inc();
                Next::Poll(poll)
            }
            None => {
                state.repeat = None;
                Next::Pingora(bytes)
            }
        }
    }

    /// The long poll `request` asks for, if this lane serves it as the request path would;
    /// `None` hands it to pingora (which also gives every refusal its reason).
    async fn admit(
        &self,
        request: &RequestHeader,
        shape: Option<HeadShape>,
        ip: Option<IpAddr>,
    ) -> Option<Admitted> {
        if request_header_bytes(request) > self.limits.max_request_header_bytes
            || self.echo_path.as_deref() == Some(request.uri.path())
        {
            return None;
        }
        let path = CanonicalPath::parse(request.uri.path()).ok()?;
        // Read before the table: a replacement in between makes the repeat route anew.
        let generation = self.topics.generation();
        let router = self.topics.current();
        let route = router.route(&path)?;
        let spec = route.spec;
        if spec.auth.is_some() || choose_transport(request, spec).ok()? != Transport::LongPoll {
            return None;
        }
        let poll = PollRequest::parse(request, spec).ok()?;
        let key = route.key.with_forwarded(forwarded_headers(request, spec));
        // Only an instance that exists: a new one is charged to the client's quota there.
        let topic = self.registry.get(&key)?;
        let ticket = self.ticket(ip)?;
        let (cors, origin_refused) = if self.cors.enabled() {
            let cors = CorsStamp::for_topic_request(&self.cors, request);
            let refused = request.headers.contains_key(http::header::ORIGIN) && !cors.allows_origin();
            (cors, refused)
        } else {
            (CorsStamp::default(), false)
        };
        let write_timeout = spec.write_timeout;
        // A topic that forwards `If-None-Match` to its backend keys instances by it: no
        // repeat, whose shape leaves that header out.
        let forwards_cursor = spec
            .forward_headers
            .iter()
            .any(|name| name.eq_ignore_ascii_case("if-none-match"));
        let repeat = shape.filter(|_| !forwards_cursor).map(|shape| Repeat {
            shape,
            generation,
            topic: Arc::clone(&topic),
            wait: poll.wait,
            deltas: poll.deltas,
            query_cursor: query_param(request, "cursor").is_some().then_some(poll.cursor),
            cors: cors.clone(),
            origin_refused,
            write_timeout,
        });
        Some(Admitted {
            poll: self.ready(topic, poll, ticket, cors, write_timeout).await,
            repeat,
        })
    }

    /// The connection's previous poll again: admitted as it was, if the routing table and
    /// the instance it chose are still current.
    async fn admit_repeat(
        &self,
        repeat: &Repeat,
        cursor: Option<Cursor>,
        header_bytes: usize,
        ip: Option<IpAddr>,
    ) -> Option<NextPoll> {
        if header_bytes > self.limits.max_request_header_bytes
            || repeat.generation != self.topics.generation()
            || repeat.topic.is_closed()
        {
            return None;
        }
        let topic = Arc::clone(&repeat.topic);
        let ticket = self.ticket(ip)?;
        if repeat.origin_refused {
            METRICS.origin_refusals.inc();
        }
        let poll = PollRequest {
            wait: repeat.wait,
            cursor: repeat.query_cursor.unwrap_or(cursor),
            deltas: repeat.deltas,
        };
        Some(
            self.ready(topic, poll, ticket, repeat.cors.clone(), repeat.write_timeout)
                .await,
        )
    }

    /// The client's per-IP long-poll slot and its place in the drain's count.
    fn ticket(&self, ip: Option<IpAddr>) -> Option<HoldTicket> {
        let ip_slot = match ip {
            Some(ip) => Some(self.long_polls.acquire(ip, self.limits.max_long_polls_per_ip)?),
            None => None,
        };
        Some(HoldTicket {
            in_flight: self.in_flight.enter(),
            ip_slot,
        })
    }

    async fn ready(
        &self,
        topic: Arc<Topic>,
        request: PollRequest,
        ticket: HoldTicket,
        cors: CorsStamp,
        write_timeout: Duration,
    ) -> NextPoll {
        topic.wait_synced(super::SYNC_WAIT).await;
        NextPoll {
            topic,
            request,
            ticket,
            cors,
            write_timeout,
        }
    }
}

/// A freshly routed poll, and how to know it again.
struct Admitted {
    poll: NextPoll,
    repeat: Option<Repeat>,
}
