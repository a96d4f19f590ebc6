//! Requests that are not on a topic path reach the backend unchanged, and come back so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}" }
"#;

#[tokio::test]
async fn get_and_post_pass_through_with_method_headers_and_body_intact() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPIC).await;

    let reply = get(sidecar.port, "/echo/a?x=1&y=two", &[("X-Test", "hello")]).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("x-echo-method"), Some("GET"));
    assert_eq!(reply.header("x-echo-path"), Some("/echo/a?x=1&y=two"));
    assert_eq!(reply.header("x-echo-test"), Some("hello"));

    let body = "{\"order\": 42, \"note\": \"ünïcode and\\nnewlines\"}".repeat(200);
    let reply = request(
        sidecar.port,
        "POST",
        "/echo/orders",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("x-echo-method"), Some("POST"));
    assert_eq!(reply.text(), body, "body unchanged both ways");

    let seen = backend.hits("/echo/orders");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].headers.get("content-type").unwrap(), "application/json");
    assert_eq!(seen[0].body, body.as_bytes());

    // The backend's own errors come back as they are.
    let reply = get(sidecar.port, "/missing", &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "no such thing");
    assert!(
        sidecar.registry.is_empty(),
        "no topic instance for pass-through traffic"
    );
}

#[tokio::test]
async fn topic_paths_refuse_writes_with_a_reason() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPIC).await;
    let reply = request(sidecar.port, "POST", "/api/prices/AAPL", &[], "x").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    assert!(reply.text().contains("not allowed"));
    assert!(backend.hits("/api/prices/AAPL").is_empty());
}
