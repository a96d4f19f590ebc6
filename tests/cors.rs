//! CORS on topic paths: preflights answered with the configured origins, headers only for
//! allowed origins, pass-through untouched, and the WebSocket `Origin` checked before the
//! upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ws::WsClient;
use common::{get, metric, request, Behaviour, SseClient, TestBackend, TestSidecar};

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/backend/prices/{symbol}", interval_ms = 50 }

[cors]
allowed_origins = ["https://app.example.com", "http://localhost:5173"]
allow_credentials = true
preflight_max_age_ms = 600000
"#;

const ALLOWED: &str = "https://app.example.com";
const FOREIGN: &str = "https://evil.example.net";

#[tokio::test]
async fn preflight_and_responses_carry_cors_only_for_allowed_origins() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    backend.set("/plain", Behaviour::Json("{}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let port = sidecar.port;

    let preflight = request(
        port,
        "OPTIONS",
        "/prices/AAPL",
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization, last-event-id"),
        ],
        "",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert!(
        preflight.header("content-length").is_none(),
        "a 204 has no Content-Length"
    );
    assert_eq!(preflight.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(preflight.header("access-control-allow-credentials"), Some("true"));
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));
    let allowed_headers = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("last-event-id"));
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert_eq!(
        backend.hit_count("/prices/AAPL"),
        0,
        "the preflight never reached the backend"
    );

    let foreign_preflight = request(
        port,
        "OPTIONS",
        "/prices/AAPL",
        &[("Origin", FOREIGN), ("Access-Control-Request-Method", "GET")],
        "",
    )
    .await;
    assert!(foreign_preflight.header("access-control-allow-origin").is_none());

    let refusals_before = metric(sidecar.admin_port, "sidestream_origin_refusals_total", &[]).await;
    let mut reply = get(port, "/prices/AAPL", &[("Origin", ALLOWED)]).await;
    for _ in 0..100 {
        if reply.status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reply = get(port, "/prices/AAPL", &[("Origin", ALLOWED)]).await;
    }
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(reply
        .header("access-control-expose-headers")
        .unwrap()
        .contains("ETag"));
    assert!(reply.header("vary").unwrap().contains("Origin"));

    let foreign = get(port, "/prices/AAPL", &[("Origin", FOREIGN)]).await;
    assert_eq!(foreign.status, 200);
    assert!(foreign.header("access-control-allow-origin").is_none());
    assert!(foreign.header("access-control-allow-credentials").is_none());
    let refusals_after = metric(sidecar.admin_port, "sidestream_origin_refusals_total", &[]).await;
    assert!(refusals_after > refusals_before);

    // An SSE stream's head is written off pingora's request path, with what the CORS
    // module decided for its request.
    let stream = SseClient::connect(
        port,
        "/prices/AAPL",
        &[("Origin", ALLOWED), ("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(stream.header("access-control-allow-credentials"), Some("true"));
    assert!(stream.header("vary").unwrap().contains("Origin"));
    assert!(stream.header("date").is_some(), "a stream's head carries a Date");
    let foreign_stream = SseClient::connect(
        port,
        "/prices/AAPL",
        &[("Origin", FOREIGN), ("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(foreign_stream.status, 200);
    assert!(foreign_stream.header("access-control-allow-origin").is_none());

    // Pass-through is the backend's business: nothing added.
    let passed = get(port, "/plain", &[("Origin", ALLOWED)]).await;
    assert_eq!(passed.status, 200);
    assert!(passed.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn websocket_origin_is_checked_before_the_upgrade() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;

    let foreign = WsClient::connect(sidecar.port, "/prices/AAPL", None, &[("Origin", FOREIGN)]).await;
    assert_eq!(foreign.status, 403, "{}", foreign.response);
    let allowed = WsClient::connect(sidecar.port, "/prices/AAPL", None, &[("Origin", ALLOWED)]).await;
    assert_eq!(allowed.status, 101);
    // Non-browser clients send no Origin at all.
    let tool = WsClient::connect(sidecar.port, "/prices/AAPL", None, &[]).await;
    assert_eq!(tool.status, 101);
}
