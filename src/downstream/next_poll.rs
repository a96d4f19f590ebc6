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
use super::router::{choose_transport, forwarded_headers, header, TopicTable};
use crate::config::{CorsSettings, Limits, Transport};
use crate::hub::{Registry, Topic};
use crate::metrics::METRICS;

/// What the lane needs of the proxy: routing, the instances, the per-IP long-poll cap, the
/// drain's count of requests in flight, CORS and the request limits.
pub struct PollLane {
    pub topics: Arc<TopicTable>,
    pub registry: Arc<Registry>,
    pub long_polls: Arc<PerIp>,
    pub in_flight: Arc<InFlight>,
    pub cors: Arc<CorsSettings>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
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

impl PollLane {
    /// Reads the connection's next request head (within the header deadline and budget, as
    /// pingora's keep-alive loop would) and decides who serves it.
    pub async fn next(&self, stream: &mut Stream, connection: &ConnectionTicket) -> Next {
        connection.start_request();
        // Not raced against the shutdown (that would register with the token on every poll):
        // a poll arriving while the server stops is answered `304` + `Connection: close` at
        // once by its hold, and an idle connection ends with the process, as pingora's do.
        let read = tokio::time::timeout(
            self.limits.request_header_timeout,
            read_head(stream, poll_request),
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
        let parsed = parsed.filter(|_| bytes.len() == length);
        let Some(request) = parsed else {
            return Next::Pingora(bytes);
        };
        let ip = stream.get_socket_digest().and_then(|digest| {
            digest
                .peer_addr()
                .and_then(|addr| addr.as_inet())
                .map(|addr| addr.ip())
        });
        match self.admit(&request, ip).await {
            Some(poll) => {
                METRICS.long_polls_read_directly.inc();
                Next::Poll(poll)
            }
            None => Next::Pingora(bytes),
        }
    }

    /// The long poll `request` asks for, if this lane serves it as the request path would;
    /// `None` hands it to pingora (which also gives every refusal its reason).
    async fn admit(&self, request: &RequestHeader, ip: Option<std::net::IpAddr>) -> Option<NextPoll> {
        if request_header_bytes(request) > self.limits.max_request_header_bytes {
            return None;
        }
        let path = CanonicalPath::parse(request.uri.path()).ok()?;
        let router = self.topics.current();
        let route = router.route(&path)?;
        let spec = route.spec;
        if spec.auth.is_some() || choose_transport(request, spec).ok()? != Transport::LongPoll {
            return None;
        }
        let poll = PollRequest::parse(request, spec).ok()?;
        // Only an instance that exists: a new one is charged to the client's quota there.
        let topic = self
            .registry
            .get(&route.key.with_forwarded(forwarded_headers(request, spec)))?;
        let ip_slot = match ip {
            Some(ip) => Some(self.long_polls.acquire(ip, self.limits.max_long_polls_per_ip)?),
            None => None,
        };
        let ticket = HoldTicket {
            in_flight: self.in_flight.enter(),
            ip_slot,
        };
        let cors = if self.cors.enabled() {
            CorsStamp::for_topic_request(&self.cors, request)
        } else {
            CorsStamp::default()
        };
        let write_timeout = spec.write_timeout;
        drop(router);
        topic.wait_synced(super::SYNC_WAIT).await;
        Some(NextPoll {
            topic,
            request: poll,
            ticket,
            cors,
            write_timeout,
        })
    }
}

/// The request a complete parsed head is, if it can be a long poll at all: a `GET` over
/// HTTP/1.1 with no body, no upgrade and nothing saying the connection ends.
fn poll_request(parsed: &httparse::Request) -> Option<RequestHeader> {
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let mut request = RequestHeader::build_no_case(
        http::Method::GET,
        parsed.path?.as_bytes(),
        Some(parsed.headers.len()),
    )
    .ok()?;
    for line in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(line.value).ok()?;
        request.append_header(name, value).ok()?;
    }
    let has_body = request.headers.contains_key(http::header::TRANSFER_ENCODING)
        || header(&request, "content-length").is_some_and(|length| length.trim() != "0");
    let ends_or_upgrades = request.headers.contains_key(http::header::UPGRADE)
        || request.headers.contains_key(http::header::EXPECT)
        || request
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|value| !value.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    (!has_body && !ends_or_upgrades).then_some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::request_head::MAX_HEADERS;

    /// [`poll_request`] of a complete head.
    fn parse_head(bytes: &[u8]) -> Option<RequestHeader> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(bytes).expect("a head").is_complete());
        poll_request(&parsed)
    }

    #[test]
    fn a_plain_poll_head_is_parsed_and_others_are_left_to_pingora() {
        let poll =
            parse_head(b"GET /feed?wait=10&cursor=3 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
                .expect("a plain long poll");
        assert_eq!(poll.uri.path(), "/feed");
        assert_eq!(poll.uri.query(), Some("wait=10&cursor=3"));
        assert_eq!(header(&poll, "host"), Some("x"));
        for other in [
            &b"POST /feed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
            b"HEAD /feed?wait=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert!(parse_head(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
        assert!(parse_head(b"GET /feed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_some());
    }
}
