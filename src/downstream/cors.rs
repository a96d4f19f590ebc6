//! CORS for topic paths: responses to an allowed `Origin` carry `Access-Control-Allow-Origin`
//! (and credentials, when configured), with the cursor headers exposed; a preflight `OPTIONS`
//! is answered here; a disallowed origin gets no CORS headers (the browser then withholds
//! the response) and is counted. Pass-through responses are left exactly as the backend sent
//! them. Implemented as a pingora downstream module so that every response sidestream writes
//! (SSE, polls, refusals) gets the same headers from one place.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::response::AnswerHead;
use super::router::TopicTable;
use crate::config::CorsSettings;
use crate::metrics::METRICS;

/// Response headers a cross-origin script may read: the cursor (`ETag`) and staleness.
const EXPOSED_HEADERS: &str = "ETag, Age, Retry-After, X-Sidestream-Stale";
/// Request headers a cross-origin client may send to a topic.
const ALLOWED_HEADERS: &str = "Authorization, Last-Event-ID, If-None-Match, Prefer, Cache-Control";

pub struct CorsBuilder {
    cors: Arc<CorsSettings>,
    topics: Arc<TopicTable>,
}

impl CorsBuilder {
    pub fn new(cors: Arc<CorsSettings>, topics: Arc<TopicTable>) -> Self {
        CorsBuilder { cors, topics }
    }
}

impl HttpModuleBuilder for CorsBuilder {
    fn init(&self) -> Module {
        Box::new(Cors {
            cors: Arc::clone(&self.cors),
            topics: Arc::clone(&self.topics),
            topic: false,
            origin: None,
        })
    }
}

struct Cors {
    cors: Arc<CorsSettings>,
    topics: Arc<TopicTable>,
    /// A topic request: its answer depends on `Origin`, whatever the origin was.
    topic: bool,
    /// The request's origin, when it is a topic request from an allowed origin.
    origin: Option<HeaderValue>,
}

impl Cors {
    /// What this request's answer is to carry; taken, so it is applied once.
    fn take_stamp(&mut self) -> CorsStamp {
        CorsStamp {
            topic: std::mem::take(&mut self.topic),
            origin: self.origin.take(),
            credentials: self.cors.allow_credentials,
        }
    }
}

/// The CORS headers of one topic answer, decided from its request. The module applies
/// them to every response written through pingora; an answer written off pingora's request
/// path (a held long poll, answered from a task of its own) takes them along instead.
#[derive(Debug, Default, Clone)]
pub struct CorsStamp {
    topic: bool,
    origin: Option<HeaderValue>,
    credentials: bool,
}

impl CorsStamp {
    /// Takes the request's stamp out of its CORS module (nothing when CORS is off).
    pub fn take(session: &mut pingora_proxy::Session) -> Self {
        session
            .downstream_modules_ctx
            .get_mut::<Cors>()
            .map_or_else(CorsStamp::default, Cors::take_stamp)
    }

    /// The stamp of a topic request read off pingora's request path (the next request on a
    /// held long poll's connection), decided as the module decides it.
    pub fn for_topic_request(cors: &CorsSettings, request: &RequestHeader) -> Self {
        CorsStamp {
            topic: true,
            origin: allowed_origin(cors, request),
            credentials: cors.allow_credentials,
        }
    }

    /// Whether [`Self::apply`] would add nothing (CORS is off for the request's route).
    pub fn adds_nothing(&self) -> bool {
        !self.topic && self.origin.is_none()
    }

    /// Whether the request's `Origin` is allowed (its answer carries the CORS headers).
    pub fn allows_origin(&self) -> bool {
        self.origin.is_some()
    }

    pub fn apply<H: AnswerHead>(self, response: &mut H) -> Result<()> {
        // Every topic answer varies by `Origin` (with CORS headers or without), so a cache
        // never hands one origin's answer to another (Fetch standard, "CORS protocol and
        // HTTP caches").
        if self.topic {
            response.append("Vary", Cow::Borrowed("Origin"))?;
        }
        // Only an allowed origin is kept, and the allowlist holds text.
        let Some(origin) = self.origin.as_ref().and_then(|origin| origin.to_str().ok()) else {
            return Ok(());
        };
        response.set("Access-Control-Allow-Origin", Cow::Owned(origin.to_string()))?;
        response.set("Access-Control-Expose-Headers", Cow::Borrowed(EXPOSED_HEADERS))?;
        if self.credentials {
            response.set("Access-Control-Allow-Credentials", Cow::Borrowed("true"))?;
        }
        Ok(())
    }
}

/// The request's `Origin` if the allowlist has it (a refused one is counted).
fn allowed_origin(cors: &CorsSettings, request: &RequestHeader) -> Option<HeaderValue> {
    let origin = request.headers.get("origin")?;
    match origin.to_str() {
        Ok(text) if cors.allows(text) => Some(origin.clone()),
        _ => {
            METRICS.origin_refusals.inc();
            None
        }
    }
}

#[async_trait]
impl HttpModule for Cors {
    async fn request_header_filter(&mut self, request: &mut RequestHeader) -> Result<()> {
        if self.topics.current().route_raw(request.uri.path()).is_none() {
            return Ok(());
        }
        self.topic = true;
        self.origin = allowed_origin(&self.cors, request);
        Ok(())
    }

    async fn response_header_filter(&mut self, response: &mut ResponseHeader, _end: bool) -> Result<()> {
        self.take_stamp().apply(response)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Whether a WebSocket upgrade carrying `origin` may proceed. With an allowlist, the list
/// decides. Without one, a cross-origin page is refused only where the topic's auth can ride
/// on a cookie the browser adds by itself (`cookie_auth`): there the page would read the
/// topic as the user. Same origin = the `Origin`'s host and port equal the `Host` header's.
pub fn websocket_origin_allowed(
    cors: &CorsSettings,
    origin: &str,
    request: &RequestHeader,
    cookie_auth: bool,
) -> bool {
    if cors.enabled() {
        return cors.allows(origin);
    }
    !cookie_auth || same_origin(origin, request)
}

/// `Origin: scheme://host[:port]` names the host the request is addressed to (`Host`, or the
/// request target's authority). An opaque origin (`null`) is never the same.
fn same_origin(origin: &str, request: &RequestHeader) -> bool {
    let Ok(origin) = origin.trim().parse::<http::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(origin_host)) = (origin.scheme_str(), origin.host()) else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return false,
    };
    let authority = match request.headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(host) => host.trim().parse::<http::uri::Authority>().ok(),
        None => request.uri.authority().cloned(),
    };
    let Some(authority) = authority else {
        return false;
    };
    authority.host().eq_ignore_ascii_case(origin_host)
        && authority.port_u16().unwrap_or(default_port) == origin.port_u16().unwrap_or(default_port)
}

/// The extra headers of a `204` preflight answer. The allow-origin header itself is added
/// by the module, and only for an allowed origin.
pub fn preflight_headers(cors: &CorsSettings) -> Vec<(&'static str, String)> {
    vec![
        ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS".into()),
        ("Access-Control-Allow-Headers", ALLOWED_HEADERS.into()),
        (
            "Access-Control-Max-Age",
            cors.preflight_max_age.as_secs().to_string(),
        ),
        ("Allow", "GET, HEAD, OPTIONS".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(host: &str) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/prices/AAPL", None).expect("valid");
        request.insert_header("Host", host).expect("valid");
        request
    }

    #[test]
    fn same_origin_compares_host_and_port_with_scheme_defaults() {
        let none = CorsSettings::default();
        let local = upgrade("127.0.0.1:8080");
        assert!(websocket_origin_allowed(
            &none,
            "http://127.0.0.1:8080",
            &local,
            true
        ));
        assert!(!websocket_origin_allowed(
            &none,
            "http://127.0.0.1:8081",
            &local,
            true
        ));
        assert!(!websocket_origin_allowed(
            &none,
            "https://evil.example",
            &local,
            true
        ));
        assert!(!websocket_origin_allowed(&none, "null", &local, true));
        // Without cookie-borne auth a foreign page gains nothing it could not fetch itself.
        assert!(websocket_origin_allowed(
            &none,
            "https://evil.example",
            &local,
            false
        ));
        let named = upgrade("App.Example.com");
        assert!(websocket_origin_allowed(
            &none,
            "https://app.example.com:443",
            &upgrade("app.example.com"),
            true
        ));
        assert!(websocket_origin_allowed(
            &none,
            "http://app.example.com",
            &named,
            true
        ));
        assert!(!websocket_origin_allowed(
            &none,
            "http://app.example.com:8443",
            &named,
            true
        ));
    }

    #[test]
    fn an_allowlist_decides_on_its_own() {
        let cors = CorsSettings {
            allowed_origins: ["https://app.example.com".to_string()].into(),
            ..CorsSettings::default()
        };
        let request = upgrade("127.0.0.1:8080");
        assert!(websocket_origin_allowed(
            &cors,
            "https://app.example.com",
            &request,
            true
        ));
        assert!(!websocket_origin_allowed(
            &cors,
            "http://127.0.0.1:8080",
            &request,
            false
        ));
    }
}
