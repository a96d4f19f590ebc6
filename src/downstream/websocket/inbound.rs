//! Client messages in, on a topic with `websocket.inbound`: where they go, how fast a client
//! may send them, and the POST that forwards one to the backend.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::metrics::METRICS;
use crate::upstream::UpstreamClient;

/// Where client messages go on a topic with `websocket.inbound`.
pub struct Inbound {
    pub client: Arc<UpstreamClient>,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A token bucket for client messages: `per_second` refill, a burst of the same size.
pub struct RateLimit {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            refilled: Instant::now(),
        }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.per_second);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// POSTs a client message to the topic's inbound URL; the backend's reply body (2xx and not
/// empty) is returned for this client only.
pub async fn forward(inbound: Arc<Inbound>, payload: Bytes, text: bool) -> Option<Bytes> {
    let content_type = if !text {
        "application/octet-stream"
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut headers = inbound.headers.clone();
    headers.push(("Content-Type".to_string(), content_type.to_string()));
    METRICS.websocket_inbound_forwarded.inc();
    match inbound
        .client
        .post(&inbound.url, &headers, payload, crate::upstream::Traffic::Inbound)
        .await
    {
        Ok(response) if (200..300).contains(&response.meta.status) && !response.body.is_empty() => {
            Some(response.body)
        }
        Ok(response) if (200..300).contains(&response.meta.status) => None,
        Ok(response) => {
            tracing::warn!(url = %inbound.url, status = response.meta.status, "inbound message refused by the backend");
            None
        }
        Err(error) => {
            tracing::warn!(url = %inbound.url, "inbound message not delivered: {error}");
            None
        }
    }
}
