//! Path values are rendered into backend URLs encoded for their position: no value adds a
//! query parameter, a path segment or a dot segment. The backend asserts the exact URLs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::raw::{raw_request, RawReply};
use common::ws::WsClient;
use common::*;

const TOPICS: &str = r#"
[[topic]]
name = "search"
path = "/search/{term}"
source.poll = { url = "/backend/search?q={term}&limit=10", interval_ms = 60000 }

[[topic]]
name = "files"
path = "/files/{name}"
source.poll = { url = "/backend/files/{name}/meta", interval_ms = 60000 }
websocket = { inbound = "/backend/files/{name}/say?as={name}" }
"#;

/// A topic answers `503` until its first upstream result: ask again (bounded) until then.
async fn get_ready(port: u16, target: &str) -> RawReply {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = raw_request(port, "GET", target, &[]).await;
        if reply.status != 503 || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn values_cannot_add_parameters_or_segments_to_backend_urls() {
    let backend = TestBackend::start().await;
    // (request target, the one backend URL it may cause)
    let served = [
        (
            "/search/x&limit=100000&admin=1",
            "/backend/search?q=x%26limit%3D100000%26admin%3D1&limit=10",
        ),
        (
            "/search/x%26admin%3D1",
            "/backend/search?q=x%26admin%3D1&limit=10",
        ),
        ("/search/a+b", "/backend/search?q=a%2Bb&limit=10"),
        ("/search/a%20b%23c", "/backend/search?q=a%20b%23c&limit=10"),
        ("/search/%3Fq=1", "/backend/search?q=%3Fq%3D1&limit=10"),
        ("/files/a;b=1", "/backend/files/a%3Bb%3D1/meta"),
        ("/files/a%3Fb", "/backend/files/a%3Fb/meta"),
        ("/files/%C3%A9", "/backend/files/%C3%A9/meta"),
        ("/files/100%25", "/backend/files/100%25/meta"),
        ("/files/a%2541", "/backend/files/a%2541/meta"),
        ("/files/...", "/backend/files/.../meta"),
    ];
    for (_, url) in served {
        backend.set(url, Behaviour::Json("{\"ok\":true}".into()));
    }
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let port = sidecar.port;
    for (target, url) in served {
        let reply = get_ready(port, target).await;
        assert_eq!(
            reply.status, 200,
            "{target} (→ {url}): {} {}",
            reply.head, reply.body
        );
    }
    let refused = [
        "/files/..",
        "/files/.",
        "/files/%2e%2E",
        "/files/.%2e",
        "/files/a%2Fb",
        "/files/..%2F..%2Fadmin",
        "/files/a%5Cb",
        "/files/a%00",
        "/files/a%0Ab",
        "/files/%252e%252e",
        "/files/a%FF",
        "/search/x%2F..",
    ];
    for target in refused {
        let reply = raw_request(port, "GET", target, &[]).await;
        assert_eq!(reply.status, 400, "{target}: {} {}", reply.head, reply.body);
    }
    let expected: BTreeSet<String> = served.iter().map(|(_, url)| url.to_string()).collect();
    let seen: BTreeSet<String> = backend.all_seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn inbound_websocket_urls_are_encoded_too() {
    let backend = TestBackend::start().await;
    let meta = "/backend/files/a%26b%3Dc%3Fd/meta";
    let inbound = "/backend/files/a%26b%3Dc%3Fd/say?as=a%26b%3Dc%3Fd";
    backend.set(meta, Behaviour::Json("\"hello\"".into()));
    backend.set(inbound, Behaviour::Json("{\"accepted\":true}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;

    let mut client = WsClient::connect(sidecar.port, "/files/a&b=c%3Fd", None, &[]).await;
    assert_eq!(client.status, 101, "{}", client.response);
    client.send_text("{\"say\":\"hi\"}").await;
    eventually("the inbound POST", || backend.hit_count(inbound) == 1).await;
    let seen: BTreeSet<String> = backend.all_seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, BTreeSet::from([meta.to_string(), inbound.to_string()]));
}
