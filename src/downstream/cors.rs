//! CORS for topic paths: responses to an allowed `Origin` carry `Access-Control-Allow-Origin`
//! (and credentials, when configured), with the cursor headers exposed; a preflight `OPTIONS`
//! is answered here; a disallowed origin gets no CORS headers (the browser then withholds
//! the response) and is counted. Pass-through responses are left exactly as the backend sent
//! them. Implemented as a pingora downstream module so that every response sidestream writes
//! (SSE, polls, refusals) gets the same headers from one place.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

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
            origin: None,
        })
    }
}

struct Cors {
    cors: Arc<CorsSettings>,
    topics: Arc<TopicTable>,
    /// The request's origin, when it is a topic request from an allowed origin.
    origin: Option<HeaderValue>,
}

#[async_trait]
impl HttpModule for Cors {
    async fn request_header_filter(&mut self, request: &mut RequestHeader) -> Result<()> {
        let Some(origin) = request.headers.get("origin") else {
            return Ok(());
        };
        if self.topics.current().route_raw(request.uri.path()).is_none() {
            return Ok(());
        }
        match origin.to_str() {
            Ok(text) if self.cors.allows(text) => self.origin = Some(origin.clone()),
            _ => METRICS.origin_refusals.inc(),
        }
        Ok(())
    }

    async fn response_header_filter(&mut self, response: &mut ResponseHeader, _end: bool) -> Result<()> {
        let Some(origin) = self.origin.take() else {
            return Ok(());
        };
        response.insert_header("Access-Control-Allow-Origin", origin)?;
        response.append_header("Vary", "Origin")?;
        response.insert_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)?;
        if self.cors.allow_credentials {
            response.insert_header("Access-Control-Allow-Credentials", "true")?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
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
