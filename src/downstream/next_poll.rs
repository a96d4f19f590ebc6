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
use super::response::if_none_match_cursor;
use super::router::{choose_transport, forwarded_headers, header, query_param, TopicTable};
use crate::config::{CorsSettings, Limits, Transport};
use crate::hub::{Cursor, Registry, Topic};
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

/// A header line's name and value.
type HeaderLine = (Box<[u8]>, Box<[u8]>);

/// A head's target and header lines without `If-None-Match` (the cursor, which changes).
struct HeadShape {
    target: Box<[u8]>,
    headers: Vec<HeaderLine>,
    /// The head's bytes around its one `If-None-Match` value, once a head with one was
    /// read: a repeat is then known by comparing bytes, without parsing.
    raw: Option<RawHead>,
}

/// A head's bytes before and after the value of its only `If-None-Match` line. Bytes that
/// are this prefix, a value without control characters, and this suffix are the same head
/// with another value: the prefix and suffix hold every line break, so the lines are the
/// same lines. Comparing them is ~100 instructions where parsing the head again (httparse,
/// then the shape compared line by line) was ~1 300 of a repeated poll's ~14 600.
struct RawHead {
    prefix: Box<[u8]>,
    suffix: Box<[u8]>,
    /// [`head_bytes`] of the head, but for the value.
    bytes_but_value: usize,
}

impl RawHead {
    /// The bytes around `parsed`'s one `If-None-Match` value, `head` being the bytes it
    /// was parsed from; `None` without exactly one such line.
    fn of(parsed: &httparse::Request, head: &[u8]) -> Option<Self> {
        let mut lines = parsed.headers.iter().filter(|line| is_cursor_header(line));
        let (line, None) = (lines.next()?, lines.next()) else {
            return None;
        };
        // httparse's values are slices of the bytes it parsed.
        let start = (line.value.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
        let end = start
            .checked_add(line.value.len())
            .filter(|&end| end <= head.len())?;
        Some(RawHead {
            prefix: head[..start].into(),
            suffix: head[end..].into(),
            bytes_but_value: head_bytes(parsed) - line.value.len(),
        })
    }

    /// The cursor and header size of `bytes` when they are exactly this head again with
    /// another well-formed `If-None-Match` (anything else is parsed as usual).
    fn repeat(&self, bytes: &[u8]) -> Option<PollHead> {
        let value_end = bytes.len().checked_sub(self.suffix.len())?;
        if value_end < self.prefix.len() || !bytes.starts_with(&self.prefix) || !bytes.ends_with(&self.suffix)
        {
            return None;
        }
        let value = &bytes[self.prefix.len()..value_end];
        if !value
            .iter()
            .all(|&byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
        {
            return None;
        }
        let value = value.trim_ascii();
        let cursor = if_none_match_cursor(Some(std::str::from_utf8(value).ok()?)).ok()?;
        Some(PollHead::Repeat(cursor, self.bytes_but_value + value.len(), None))
    }
}

impl HeadShape {
    fn of(parsed: &httparse::Request, head: &[u8]) -> Option<Self> {
        Some(HeadShape {
            target: parsed.path?.as_bytes().into(),
            headers: parsed
                .headers
                .iter()
                .filter(|line| !is_cursor_header(line))
                .map(|line| (line.name.as_bytes().into(), line.value.into()))
                .collect(),
            raw: RawHead::of(parsed, head),
        })
    }

    /// Whether `parsed` has this shape: compared in place, nothing allocated.
    fn matches(&self, parsed: &httparse::Request) -> bool {
        parsed.path.is_some_and(|path| path.as_bytes() == &*self.target)
            && parsed
                .headers
                .iter()
                .filter(|line| !is_cursor_header(line))
                .map(|line| (line.name.as_bytes(), line.value))
                .eq(self.headers.iter().map(|(name, value)| (&**name, &**value)))
    }
}

fn is_cursor_header(line: &httparse::Header) -> bool {
    line.name.eq_ignore_ascii_case("if-none-match")
}

/// What the lane made of a complete head.
enum PollHead {
    /// The connection's previous poll again, with this `If-None-Match` cursor; the header's
    /// size as [`request_header_bytes`] counts it; and the head's bytes around the cursor,
    /// when the shape did not have them yet.
    Repeat(Option<Cursor>, usize, Option<RawHead>),
    /// A request that may be a long poll, to be routed; and its shape, to know it again.
    Fresh(Box<RequestHeader>, Option<HeadShape>),
    /// Not a long poll the lane serves.
    Other,
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
                |bytes| repeat.and_then(|repeat| repeat.shape.raw.as_ref()?.repeat(bytes)),
                |parsed, head| classify(parsed, head, repeat),
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
                    if raw.is_some() {
                        repeat.shape.raw = raw;
                    }
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
        if request_header_bytes(request) > self.limits.max_request_header_bytes {
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

/// Decides what a complete head is: the previous poll again, a request to route, or none
/// of the lane's.
fn classify(parsed: &httparse::Request, head: &[u8], repeat: Option<&Repeat>) -> PollHead {
    if let Some(repeat) = repeat.filter(|repeat| repeat.shape.matches(parsed)) {
        // The same lines passed `poll_request` before; only the cursor is read again.
        let cursor = parsed
            .headers
            .iter()
            .find(|line| is_cursor_header(line))
            .map(|line| std::str::from_utf8(line.value).map_err(|_| ()))
            .transpose()
            .ok()
            .map(|value| if_none_match_cursor(value));
        if let Some(Ok(cursor)) = cursor {
            let raw = match repeat.shape.raw {
                Some(_) => None,
                None => RawHead::of(parsed, head),
            };
            return PollHead::Repeat(cursor, head_bytes(parsed), raw);
        }
    }
    match poll_request(parsed) {
        Some(request) => PollHead::Fresh(Box::new(request), HeadShape::of(parsed, head)),
        None => PollHead::Other,
    }
}

/// A parsed head's size as [`request_header_bytes`] counts it.
fn head_bytes(parsed: &httparse::Request) -> usize {
    let line = parsed.method.map_or(0, str::len) + parsed.path.map_or(0, str::len) + 11;
    let headers: usize = parsed
        .headers
        .iter()
        .map(|line| line.name.len() + line.value.len() + 4)
        .sum();
    line + headers
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

    /// Whether `shape` (of `first`) knows `next` again.
    fn same_shape(first: &[u8], next: &[u8]) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(first).expect("a head").is_complete());
        let shape = HeadShape::of(&parsed, first).expect("a shape");
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(next).expect("a head").is_complete());
        shape.matches(&parsed)
    }

    #[test]
    fn a_repeat_is_the_same_request_but_for_its_if_none_match() {
        let first = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n";
        assert!(same_shape(first, first));
        assert!(same_shape(
            first,
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nif-none-match: \"a-2\"\r\nAccept: */*\r\n\r\n"
        ));
        assert!(same_shape(
            first,
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        ));
        for other in [
            &b"GET /feed?wait=11 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n"[..],
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: y\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nAccept: */*\r\nHost: x\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nOrigin: https://a.example\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        ] {
            let same = same_shape(first, other);
            // The one with a blank line more is the same head (the rest is a next request,
            // which the lane checks apart from the shape).
            assert_eq!(
                same,
                other.ends_with(b"\r\n\r\n\r\n"),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// What the bytes of `first` (around its `If-None-Match` value) know of `next` without
    /// parsing it: its cursor and header size, and those the parse gives, for comparison.
    fn raw_repeat(first: &[u8], next: &[u8]) -> Option<(Option<Cursor>, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(first).expect("a head").is_complete());
        let raw = RawHead::of(&parsed, first)?;
        match raw.repeat(next)? {
            PollHead::Repeat(cursor, size, None) => Some((cursor, size)),
            _ => panic!("a raw repeat is a repeat, and brings no new raw head"),
        }
    }

    #[test]
    fn a_repeat_is_known_by_its_bytes_only_when_nothing_but_the_cursor_changed() {
        let first = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\n";
        let next = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nAccept: */*\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(next).expect("a head").is_complete());
        let parsed_size = head_bytes(&parsed);
        let cursor: Cursor = "a-12".parse().expect("a cursor");
        assert_eq!(raw_repeat(first, next), Some((Some(cursor), parsed_size)));
        assert_eq!(
            raw_repeat(
                first,
                b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match:  \"a-12\" \r\nAccept: */*\r\n\r\n"
            ),
            Some((Some(cursor), parsed_size)),
            "spaces around the value are not part of it"
        );
        assert_eq!(
            raw_repeat(
                first,
                b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nAccept: */*\r\n\r\n"
            ),
            Some((None, parsed_size - 5))
        );
        for other in [
            // Another line, or the same with a line break, a control byte, a pipelined
            // request or a bad cursor in the value: parsed as usual.
            &b"GET /feed?wait=11 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nAccept: */*\r\n\r\n"[..],
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-12\"\r\nX: y\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\r\nX: 2\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\x002\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n\r\nGET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-2\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-x\"\r\nAccept: */*\r\n\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\nAccept: */*\r\n",
            b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(raw_repeat(first, other), None, "{}", String::from_utf8_lossy(other));
        }
        // A head with no or two `If-None-Match` lines has no raw form.
        for without in [
            &b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /feed HTTP/1.1\r\nIf-None-Match: \"a-1\"\r\nif-none-match: \"a-2\"\r\n\r\n",
        ] {
            assert_eq!(raw_repeat(without, without), None);
        }
    }

    #[test]
    fn a_parsed_heads_size_is_counted_as_for_a_request_header() {
        let bytes = b"GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a-1\"\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(bytes).expect("a head").is_complete());
        let request = poll_request(&parsed).expect("a poll");
        assert_eq!(head_bytes(&parsed), request_header_bytes(&request));
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
