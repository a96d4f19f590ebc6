//! `POST /publish/{topic path}`: push sources. Bearer-token protected; the body is one
//! message, or with `?batch=1` a JSON array of `{"data", "event"?, "idempotency_key"?}`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::Response;
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;

use super::{reply, text, Admin};
use crate::config::SourceSpec;
use crate::downstream::router::{header, query_param};
use crate::hub::{Payload, Published};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    data: serde_json::Value,
    event: Option<String>,
    idempotency_key: Option<String>,
}

/// Compares without an early exit, so response time says nothing about the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn unauthorized(reason: &str) -> Response<Vec<u8>> {
    let mut response = text(401, reason);
    if let Ok(value) = http::HeaderValue::from_str("Bearer realm=\"sidestream publish\"") {
        response.headers_mut().insert("WWW-Authenticate", value);
    }
    response
}

async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, Response<Vec<u8>>> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    crate::metrics::METRICS
                        .limit_hits
                        .with_label_values(&["publish_body_bytes"])
                        .inc();
                    return Err(text(
                        413,
                        &format!("the body is larger than publish_max_body_bytes ({limit})"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(error) => return Err(text(400, &format!("cannot read the body: {error}"))),
        }
    }
}

fn valid_event(name: &str) -> bool {
    !name.is_empty() && !name.contains(['\r', '\n'])
}

pub async fn handle(admin: &Admin, session: &mut ServerSession, topic_path: &str) -> Response<Vec<u8>> {
    let Some(expected) = admin.publish_token.as_ref().map(crate::config::Secret::expose) else {
        return text(403, "publishing is disabled: set server.publish_token");
    };
    let request = session.req_header();
    let Some(given) = header(request, "authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
        return unauthorized("missing `Authorization: Bearer <publish_token>`");
    };
    if !same_secret(given.trim().as_bytes(), expected.as_bytes()) {
        return unauthorized("wrong publish token");
    }
    let router = admin.topics.current();
    let Some(route) = router.route_raw(topic_path) else {
        return text(404, &format!("no topic has the path {topic_path}"));
    };
    if !matches!(route.spec.source, SourceSpec::Push) {
        return text(
            409,
            &format!(
                "topic {} is not a push topic: its source is the backend",
                route.spec.name
            ),
        );
    }
    let event = query_param(request, "event")
        .map(|e| e.into_owned())
        .or_else(|| header(request, "x-sidestream-event").map(str::to_string));
    if event.as_deref().is_some_and(|e| !valid_event(e)) {
        return text(400, "the event name must be non-empty and on one line");
    }
    let batch = query_param(request, "batch").is_some_and(|b| b == "1" || b == "true");
    let idempotency_key = header(request, "idempotency-key").map(str::to_string);
    let content_type = header(request, "content-type").map(Arc::<str>::from);
    let body = match read_body(session, admin.publish_max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let spec = route.spec;
    let default_event = event.map(Arc::<str>::from).or_else(|| spec.event.clone());
    let items: Vec<(Option<String>, Payload)> = if batch {
        let items: Vec<BatchItem> = match serde_json::from_slice(&body) {
            Ok(items) => items,
            Err(error) => {
                return text(
                    400,
                    &format!(
                        "a batch is a JSON array of {{\"data\", \"event\"?, \"idempotency_key\"?}}: {error}"
                    ),
                )
            }
        };
        if let Some(bad) = items
            .iter()
            .filter_map(|i| i.event.as_deref())
            .find(|e| !valid_event(e))
        {
            return text(400, &format!("invalid event name {bad:?}"));
        }
        items
            .into_iter()
            .map(|item| {
                let (data, content_type) = match item.data {
                    serde_json::Value::String(text) => (Bytes::from(text), "text/plain; charset=utf-8"),
                    other => (Bytes::from(other.to_string()), "application/json"),
                };
                let payload = Payload {
                    event: item.event.map(Arc::from).or_else(|| default_event.clone()),
                    content_type: Some(Arc::from(content_type)),
                    data,
                };
                (item.idempotency_key, payload)
            })
            .collect()
    } else {
        let payload = Payload {
            event: default_event,
            content_type,
            data: body,
        };
        vec![(idempotency_key, payload)]
    };
    let mut published: Vec<Published> = Vec::with_capacity(items.len());
    if let Some(cluster) = &admin.cluster {
        // Sequenced in Redis, in request order; every sidecar's follower delivers it.
        let max_messages = spec.hub.history.max_messages;
        for (key, payload) in &items {
            match cluster
                .publish_push(&route.key, max_messages, payload, key.as_deref())
                .await
            {
                Ok(done) => published.push(done),
                Err(error) => {
                    // Degraded: refused rather than delivered here only, which would be a
                    // silent partial delivery (the other sidecars' clients would never see it).
                    let (why, retry_after) = match error {
                        crate::cluster::store::StoreError::Degraded => (
                            "the cluster is degraded (Redis unreachable) and a push would reach this sidecar's clients only",
                            "5",
                        ),
                        _ => ("the cluster's Redis is not answering", "1"),
                    };
                    tracing::warn!(topic = %route.key, "push not published: {error}");
                    // Nothing after the first failure was published; what came before was.
                    let mut response = text(
                        503,
                        &format!(
                            "{why}; {} of {} messages were published, retry the rest",
                            published.len(),
                            items.len()
                        ),
                    );
                    response
                        .headers_mut()
                        .insert("Retry-After", http::HeaderValue::from_static(retry_after));
                    return response;
                }
            }
        }
    } else {
        let topic = admin.registry.get_or_create(&route.key, || spec.hub.clone());
        for (key, payload) in items {
            published.push(topic.publish_once(key.as_deref(), payload));
        }
    }
    reply(200, "application/json", result_json(&published))
}

fn result_json(published: &[Published]) -> String {
    let cursors: Vec<String> = published.iter().map(|p| format!("\"{}\"", p.cursor)).collect();
    let duplicates = published.iter().filter(|p| p.duplicate).count();
    let last = published.last().map(|p| p.cursor.to_string()).unwrap_or_default();
    format!(
        "{{\"cursor\":\"{last}\",\"cursors\":[{}],\"duplicates\":{duplicates}}}\n",
        cursors.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
    }
}
