//! Which topic a request path belongs to, and which transport the request asks for.

use std::borrow::Cow;
use std::sync::Arc;

use pingora_http::RequestHeader;

use super::canonical::CanonicalPath;
use super::shield::Shield;
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
    shield: Shield,
}

/// The current topics, swappable by a reload while requests keep reading the old ones they
/// started with.
pub struct TopicTable {
    current: std::sync::RwLock<Arc<Router>>,
    /// Counts replacements: a decision made under one table is known stale without a lock.
    generation: std::sync::atomic::AtomicU64,
    /// `upstream.base_url`'s path (changes only with a restart): shielded paths are below it.
    path_prefix: String,
}

impl TopicTable {
    pub fn new(topics: Vec<TopicSpec>, path_prefix: &str) -> Self {
        TopicTable {
            current: std::sync::RwLock::new(Arc::new(Router::new(topics, path_prefix))),
            generation: std::sync::atomic::AtomicU64::new(0),
            path_prefix: path_prefix.to_string(),
        }
    }

    /// Which table is current: changes with every [`TopicTable::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Router> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, topics: Vec<TopicSpec>) {
        let router = Arc::new(Router::new(topics, &self.path_prefix));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = router;
        // After the swap: a reader that sees the new generation then reads the new table.
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Router {
    /// Also says (once per start or reload) which backend paths the pass-through refuses.
    pub fn new(topics: Vec<TopicSpec>, path_prefix: &str) -> Self {
        let shield = Shield::new(&topics, path_prefix);
        let shielded = shield.descriptions();
        if !shielded.is_empty() {
            tracing::info!(
                paths = ?shielded,
                "the pass-through refuses (403) these backend paths of topics with auth"
            );
        }
        Router { topics, shield }
    }

    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    /// The topic instance `path` names, if any. Validation guarantees at most one matches.
    /// The instance's parameters are the decoded segments.
    pub fn route(&self, path: &CanonicalPath) -> Option<Route<'_>> {
        self.topics.iter().find_map(|spec| {
            spec.path.matches_segments(path.segments()).map(|params| Route {
                spec,
                key: TopicKey::new(Arc::clone(&spec.name), params),
            })
        })
    }

    /// [`Router::route`] for a path as it came on the wire; a path refused by
    /// canonicalization is no topic.
    pub fn route_raw(&self, raw_path: &str) -> Option<Route<'_>> {
        self.route(&CanonicalPath::parse(raw_path).ok()?)
    }

    /// What `path` is on the backend, when the pass-through must refuse it.
    pub fn shielded(&self, path: &CanonicalPath) -> Option<&str> {
        self.shield.covers(path)
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

/// The request's cookies as `(name, value)` pairs, over every `Cookie` header (RFC 6265 §5.4).
pub fn cookies(request: &RequestHeader) -> impl Iterator<Item = (&str, &str)> {
    request
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
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
        None if upgrades_to_websocket(request) => Transport::Websocket,
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

/// `Upgrade` lists `websocket` among its protocols; any other upgrade (`h2c`, TLS) is not
/// offered here and the request is served as if it had asked for none (RFC 9110 §7.8).
fn upgrades_to_websocket(request: &RequestHeader) -> bool {
    request
        .headers
        .get_all("upgrade")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| {
            // A protocol may carry a version (`websocket/13`); the name is what counts.
            let name = protocol.trim().split('/').next().unwrap_or("");
            name.eq_ignore_ascii_case("websocket")
        })
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
