//! Which topic a request path belongs to, and which transport the request asks for.

use std::borrow::Cow;
use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::config::{TopicSpec, Transport};
use crate::hub::TopicKey;

/// A request that landed on a topic path.
#[derive(Debug)]
pub struct Route<'a> {
    pub spec: &'a TopicSpec,
    pub key: TopicKey,
}

pub struct Router {
    topics: Vec<TopicSpec>,
}

/// The current topics, swappable by a reload while requests keep reading the old ones they
/// started with.
pub struct TopicTable(std::sync::RwLock<Arc<Router>>);

impl TopicTable {
    pub fn new(topics: Vec<TopicSpec>) -> Self {
        TopicTable(std::sync::RwLock::new(Arc::new(Router::new(topics))))
    }

    pub fn current(&self) -> Arc<Router> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, topics: Vec<TopicSpec>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Router::new(topics));
    }
}

impl Router {
    pub fn new(topics: Vec<TopicSpec>) -> Self {
        Router { topics }
    }

    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    /// The topic instance `path` names, if any. Validation guarantees at most one matches.
    pub fn route(&self, path: &str) -> Option<Route<'_>> {
        self.topics.iter().find_map(|spec| {
            spec.path.matches(path).map(|params| Route {
                spec,
                key: TopicKey::new(Arc::clone(&spec.name), params),
            })
        })
    }
}

/// The `(header, value)` pairs a topic forwards upstream, from this request. A header the
/// client did not send is forwarded as absent, which is an identity of its own.
pub fn forwarded_headers(request: &RequestHeader, spec: &TopicSpec) -> Vec<(String, String)> {
    spec.forward_headers
        .iter()
        .filter_map(|name| Some((name.clone(), header(request, name)?.to_string())))
        .collect()
}

/// One query parameter, percent-decoded; the last occurrence wins.
pub fn query_param<'a>(request: &'a RequestHeader, name: &str) -> Option<Cow<'a, str>> {
    let query = request.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value)
        .last()
}

pub fn header<'a>(request: &'a RequestHeader, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Why a request cannot be served as asked.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

/// Picks the transport, as in the design's table: an explicit `?transport=` first, then
/// `Upgrade`, `Accept: text/event-stream`, a wait (`Prefer: wait=N` or `?wait=N`), else short
/// poll. A transport the topic switched off is refused with a reason, never left hanging.
pub fn choose_transport(request: &RequestHeader, spec: &TopicSpec) -> Result<Transport, Refusal> {
    let explicit = query_param(request, "transport");
    let wanted = match explicit.as_deref() {
        Some("sse") => Transport::Sse,
        Some("long_poll") => Transport::LongPoll,
        Some("short_poll") => Transport::ShortPoll,
        Some("websocket") => Transport::Websocket,
        Some(other) => {
            return Err(Refusal {
                status: 400,
                reason: format!("unknown transport {other:?}; use sse, long_poll, short_poll or websocket"),
            })
        }
        None if header(request, "upgrade").is_some() => Transport::Websocket,
        None if accepts_event_stream(request) => Transport::Sse,
        None if wants_wait(request) => Transport::LongPoll,
        None => Transport::ShortPoll,
    };
    if !spec.transports.contains(&wanted) {
        let mut offered: Vec<&str> = spec.transports.iter().map(|t| transport_name(*t)).collect();
        offered.sort_unstable();
        return Err(Refusal {
            status: 406,
            reason: format!(
                "transport {} is switched off for topic {}; offered: {}",
                transport_name(wanted),
                spec.name,
                offered.join(", ")
            ),
        });
    }
    Ok(wanted)
}

pub fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Sse => "sse",
        Transport::LongPoll => "long_poll",
        Transport::ShortPoll => "short_poll",
        Transport::Websocket => "websocket",
    }
}

fn accepts_event_stream(request: &RequestHeader) -> bool {
    header(request, "accept").is_some_and(|accept| {
        accept.split(',').any(|item| {
            item.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
    })
}

fn wants_wait(request: &RequestHeader) -> bool {
    query_param(request, "wait").is_some()
        || header(request, "prefer").is_some_and(|prefer| {
            prefer
                .split(',')
                .any(|item| item.trim().to_ascii_lowercase().starts_with("wait="))
        })
}
