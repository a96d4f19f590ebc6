//! HTTP details of topic answers, each as the RFC says: a `304` without a `Content-Length`
//! (RFC 9110 §8.6), `HEAD` on SSE = the headers and no body (§9.3.2), `Vary: Origin` on every
//! topic answer when CORS is on, `Cache-Control: private` on authenticated answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 100, jitter_ms = 0 }

[[topic]]
name = "orders"
path = "/orders/{account}"
source.poll = { url = "/backend/orders/{account}", interval_ms = 100 }
auth = "backend"

[auth.backend.callback]
url = "/auth/allow"
"#;

async fn setup(extra_topics: &str) -> (std::sync::Arc<TestBackend>, TestSidecar) {
    let backend = TestBackend::start().await;
    backend.set("/prices/A", Behaviour::Json("{\"p\":1}".into()));
    backend.set("/backend/orders/7", Behaviour::Json("{\"o\":7}".into()));
    backend.set("/auth/allow", Behaviour::Status(204));
    let sidecar = TestSidecar::start(backend.port, "", &format!("{TOPICS}{extra_topics}")).await;
    (backend, sidecar)
}

/// The first `200` of a topic (its poller needs a moment).
async fn first_200(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    for _ in 0..200 {
        let reply = get(port, path, headers).await;
        if reply.status == 200 {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no 200 from {path}");
}

#[tokio::test]
async fn a_304_carries_no_content_length() {
    let (_backend, sidecar) = setup("").await;
    let reply = first_200(sidecar.port, "/api/prices/A", &[]).await;
    let etag = reply.header("etag").unwrap().to_string();
    let short = get(sidecar.port, "/api/prices/A", &[("If-None-Match", &etag)]).await;
    assert_eq!(short.status, 304);
    assert_eq!(short.header("content-length"), None, "{:?}", short.headers);
    let long = get(
        sidecar.port,
        "/api/prices/A?wait=0.1",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(long.status, 304);
    assert_eq!(long.header("content-length"), None, "{:?}", long.headers);
}

/// `HEAD` with `Accept: text/event-stream`: the SSE headers, no body, and the request is
/// over: the next request on the same connection is answered.
#[tokio::test]
async fn head_on_sse_sends_the_headers_and_ends() {
    let (_backend, sidecar) = setup("").await;
    first_200(sidecar.port, "/api/prices/A", &[]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    let host = format!("127.0.0.1:{}", sidecar.port);
    let head_request =
        format!("HEAD /api/prices/A HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(head_request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the HEAD answer")
            .unwrap();
        assert!(read > 0, "closed before the header ended");
        received.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    // The same connection serves the next request: the HEAD answer had no body and ended.
    let get_request = format!("GET /api/prices/A HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(get_request.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the GET answer, then the close")
        .unwrap();
    let rest = String::from_utf8_lossy(&received[head_end..]);
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "no body after the HEAD answer: {rest:?}"
    );
    assert!(rest.ends_with("{\"p\":1}"), "{rest:?}");
}

#[tokio::test]
async fn every_topic_answer_varies_by_origin_when_cors_is_on() {
    let cors = r#"
[cors]
allowed_origins = ["https://app.example.com"]
"#;
    let (backend, sidecar) = setup(cors).await;
    backend.set("/plain", Behaviour::Json("{}".into()));
    let vary = |reply: &Reply| {
        reply
            .headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin"))
    };
    let allowed = first_200(
        sidecar.port,
        "/api/prices/A",
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert!(vary(&allowed), "{:?}", allowed.headers);
    let foreign = get(
        sidecar.port,
        "/api/prices/A",
        &[("Origin", "https://evil.example.net")],
    )
    .await;
    assert!(vary(&foreign), "a refused origin: {:?}", foreign.headers);
    let none = get(sidecar.port, "/api/prices/A", &[]).await;
    assert!(vary(&none), "no Origin at all: {:?}", none.headers);
    // Pass-through stays the backend's answer.
    let passed = get(sidecar.port, "/plain", &[]).await;
    assert!(!vary(&passed), "{:?}", passed.headers);
}

/// Credentials a shared cache does not see (a cookie, a query token) must keep it from
/// storing the answer; `no-cache` stays where it was.
#[tokio::test]
async fn authenticated_answers_are_private() {
    let (_backend, sidecar) = setup("").await;
    let cookie = [("Cookie", "sid=alice")];
    let short = first_200(sidecar.port, "/orders/7", &cookie).await;
    assert_eq!(short.header("cache-control"), Some("private, no-cache"));
    let etag = short.header("etag").unwrap().to_string();
    let unchanged = get(
        sidecar.port,
        "/orders/7",
        &[("Cookie", "sid=alice"), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.header("cache-control"), Some("private, no-cache"));
    let long = get(
        sidecar.port,
        "/orders/7?wait=0.1",
        &[("Cookie", "sid=alice"), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(long.header("cache-control"), Some("private, no-cache"));
    let sse = SseClient::connect(sidecar.port, "/orders/7", &cookie).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("cache-control"),
        Some("private, no-cache, no-transform")
    );
    // A topic without auth is shareable as before.
    let open = first_200(sidecar.port, "/api/prices/A", &[]).await;
    assert_eq!(open.header("cache-control"), Some("no-cache"));
}
