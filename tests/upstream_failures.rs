//! Backend down, 500s, timeouts and garbage: the sidecar backs off, keeps serving the last
//! good state, and recovers when the backend does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use sidestream::hub::TopicKey;

// timeout_ms = 500, backoff 100 ms → 800 ms cap (see TestSidecar::start).
const TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 50, jitter_ms = 0 }
"#;

fn key(symbol: &str) -> TopicKey {
    TopicKey::new("prices", vec![symbol.into()])
}

/// Gaps between consecutive backend requests on `path` after `from`.
fn gaps(backend: &TestBackend, path: &str, from: tokio::time::Instant) -> Vec<Duration> {
    let times: Vec<_> = backend
        .hits(path)
        .into_iter()
        .map(|s| s.at)
        .filter(|t| *t >= from)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn failures_back_off_serve_stale_and_recover() {
    let backend = TestBackend::start().await;
    let path = "/prices/F";
    backend.set(path, Behaviour::Json("{\"good\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPIC).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/F", &[]).await;
    assert_eq!(
        client.next_event().await.unwrap().data.as_deref(),
        Some("{\"good\":1}")
    );
    let topic = sidecar.registry.get(&key("F")).unwrap();

    for (name, behaviour) in [
        ("500", Behaviour::Status(500)),
        (
            "garbage",
            Behaviour::Plain("application/json", "{\"truncated".into()),
        ),
        ("timeout", Behaviour::Hang),
    ] {
        let since = tokio::time::Instant::now();
        backend.set(path, behaviour);
        eventually(&format!("{name}: failures recorded"), || {
            topic.upstream_health().consecutive_failures >= 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failing = backend.hits(path).into_iter().filter(|s| s.at >= since).count();
        // At a 50 ms interval 1.5 s would be ~30 requests; backoff (100 ms doubling to an
        // 800 ms cap, full jitter) allows far fewer. A hung request also holds for 500 ms.
        assert!(failing <= 16, "{name}: {failing} requests while failing");
        assert!(topic.upstream_health().last_error.is_some(), "{name}");

        // The last good state is still what a new client gets.
        let mut late = SseClient::connect(sidecar.port, "/api/prices/F", &[]).await;
        assert_eq!(
            late.next_event().await.unwrap().data.as_deref(),
            Some("{\"good\":1}"),
            "{name}"
        );

        backend.set(path, Behaviour::Json("{\"good\":1}".into()));
        eventually(&format!("{name}: recovery"), || {
            topic.upstream_health().consecutive_failures == 0
        })
        .await;
    }

    // Recovery publishes real changes again. Meanwhile the client was told when the data
    // went stale and when it was fresh again, once per failure episode.
    backend.set(path, Behaviour::Json("{\"good\":2}".into()));
    let mut stale_flags = Vec::new();
    let next = loop {
        let event = client.next_event().await.unwrap();
        if event.event.as_deref() == Some("stale") {
            assert!(event.id.is_none(), "stale notices do not move the cursor");
            stale_flags.push(event.data.unwrap());
            continue;
        }
        break event;
    };
    assert_eq!(next.data.as_deref(), Some("{\"good\":2}"));
    assert_eq!(stale_flags, ["{\"stale\":true}", "{\"stale\":false}"].repeat(3));
    assert_eq!(topic.cursor().seq, 2, "failures never became messages");
}

#[tokio::test]
async fn backend_down_then_back() {
    let backend = TestBackend::start().await;
    let path = "/prices/D";
    backend.set(path, Behaviour::Json("{\"v\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPIC).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/D", &[]).await;
    client.next_event().await.unwrap();
    let topic = sidecar.registry.get(&key("D")).unwrap();

    backend.go_down();
    eventually("connection failures", || {
        topic.upstream_health().consecutive_failures >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Refused connections fail fast: without backoff a 50 ms interval would mean ~30
    // attempts in 1.5 s.
    let health = topic.upstream_health();
    assert!(
        health.consecutive_failures <= 16,
        "{} attempts",
        health.consecutive_failures
    );
    // Either the connection error itself or the circuit breaker failing fast after it.
    let error = health.last_error.unwrap();
    assert!(error.contains("failed") || error.contains("circuit"), "{error}");

    let since = tokio::time::Instant::now();
    backend.set(path, Behaviour::Json("{\"v\":2}".into()));
    backend.come_back().await;
    let stale = client.next_event().await.unwrap();
    assert_eq!(
        (stale.event.as_deref(), stale.data.as_deref()),
        (Some("stale"), Some("{\"stale\":true}"))
    );
    let fresh = client.next_event().await.unwrap();
    assert_eq!(fresh.data.as_deref(), Some("{\"stale\":false}"));
    assert_eq!(
        client.next_event().await.unwrap().data.as_deref(),
        Some("{\"v\":2}")
    );
    assert_eq!(topic.upstream_health().consecutive_failures, 0);
    // Back to the normal interval once recovered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recovered = gaps(&backend, path, since);
    assert!(recovered.len() >= 4, "polling resumed: {recovered:?}");
}
