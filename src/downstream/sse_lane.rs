//! A new SSE stream's request served before any pingora session exists.
//!
//! Every connection's request head is read by `connection_limit` into a small buffer first
//! (`request_head`). When that head is a plain request for an SSE stream of a topic instance
//! that already lives here, it is answered from that buffer: routed, subscribed and handed to
//! the stream's task, without a `ServerSession`, pingora's second parse of the same bytes, its
//! proxy state machine and the placeholder session a detached answer leaves behind. That was
//! ~4 µs of the ~48 µs of CPU per new SSE connection in a connect storm (README, session 17),
//! and a reconnect storm is made of nothing else.
//!
//! What this lane serves is exactly what the request path would serve the same way: a `GET`
//! over HTTP/1.1 without a body choosing SSE, to an existing instance of a topic without
//! auth, with nothing pipelined behind it. Anything else — a `HEAD`, auth, a new instance
//! (charged to the client's quota there), a bad `delta` or transport, an oversized head, the
//! echo endpoint — goes to pingora with the bytes already read, which serves it (or refuses
//! it with its reason) as before.

use pingora_core::protocols::Stream;
use pingora_http::RequestHeader;

use super::canonical::CanonicalPath;
use super::cors::CorsStamp;
use super::next_poll::PollLane;
use super::request_head::plain_get;
use super::request_header_bytes;
use super::response::sse_resume;
use super::router::{choose_transport, forwarded_headers};
use super::sse::{self, Opening};
use crate::config::Transport;
use crate::metrics::METRICS;

/// The request a complete head is when it may be one for a new SSE stream. Most heads are not
/// (pass-through requests): they are told apart by their method and `Accept` line or query,
/// before anything is allocated.
pub fn sse_request(parsed: &httparse::Request) -> Option<Box<RequestHeader>> {
    if parsed.method? != "GET" {
        return None;
    }
    let asks_for_sse = parsed.path.is_some_and(|path| path.contains("transport=sse"))
        || parsed.headers.iter().any(|line| {
            line.name.eq_ignore_ascii_case("accept")
                && line
                    .value
                    .windows(17)
                    .any(|part| part.eq_ignore_ascii_case(b"text/event-stream"))
        });
    asks_for_sse.then(|| plain_get(parsed)).flatten().map(Box::new)
}

impl PollLane {
    /// Opens the SSE stream `request` asks for on `stream`, if the request path would open it
    /// the same way; otherwise gives `stream` back for pingora to serve. `keep_alive`: the
    /// connection may carry another request after this one (not when the server stops).
    pub async fn open_sse(
        &self,
        stream: Stream,
        request: &RequestHeader,
        keep_alive: bool,
    ) -> Result<(), Stream> {
        if request_header_bytes(request) > self.limits.max_request_header_bytes
            || self.echo_path.as_deref() == Some(request.uri.path())
        {
            return Err(stream);
        }
        let Ok(path) = CanonicalPath::parse(request.uri.path()) else {
            return Err(stream);
        };
        let router = self.topics.current();
        let Some(route) = router.route(&path) else {
            return Err(stream);
        };
        let spec = route.spec;
        if spec.auth.is_some() || choose_transport(request, spec).ok() != Some(Transport::Sse) {
            return Err(stream);
        }
        let Ok(deltas) = super::delta::requested(request, spec.hub.deltas) else {
            return Err(stream);
        };
        let key = route.key.with_forwarded(forwarded_headers(request, spec));
        let Some(topic) = self.registry.get(&key) else {
            return Err(stream);
        };
        // Past every refusal: from here on the lane answers (a CORS refusal is counted once).
        super::connection_limit::mark_header_complete();
        let in_flight = self.in_flight.enter();
        let cors = if self.cors.enabled() {
            CorsStamp::for_topic_request(&self.cors, request)
        } else {
            CorsStamp::default()
        };
        topic.wait_synced(super::SYNC_WAIT).await;
        let drain = sse::Drain {
            signal: self.shutdown.clone(),
            spread: self.drain_spread,
        };
        let opening = Opening {
            keep_alive,
            resume: sse_resume(request),
            cors,
            deltas,
            private: false,
            expiry: None,
            in_flight,
        };
        if let Err(error) = sse::start(stream, topic, spec, &drain, opening) {
            tracing::debug!("cannot open an SSE stream: {error}");
        }
        METRICS.sse_streams_opened_directly.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::request_head::with_parsed_head;

    fn may_be_sse(bytes: &[u8]) -> bool {
        with_parsed_head(bytes, |parsed| sse_request(parsed).is_some())
    }

    #[test]
    fn only_a_plain_get_asking_for_an_event_stream_may_be_served_by_the_lane() {
        for sse in [
            &b"GET /feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"[..],
            b"GET /feed HTTP/1.1\r\nHost: x\r\naccept: text/html, TEXT/EVENT-STREAM;q=0.9\r\n\r\n",
            b"GET /feed?transport=sse HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(may_be_sse(sse), "{}", String::from_utf8_lossy(sse));
        }
        for other in [
            &b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /feed HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
            b"HEAD /feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /feed HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
            b"POST /feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(!may_be_sse(other), "{}", String::from_utf8_lossy(other));
        }
    }
}
