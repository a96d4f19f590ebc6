//! Protecting the backend: the circuit breaker, serve-stale with the age visible, the
//! backend's own pacing (Cache-Control max-age), and forwarded identities.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/p/{symbol}", interval_ms = 50, jitter_ms = 0 }

[[topic]]
name = "me"
path = "/me"
forward_headers = ["Authorization"]
source.poll = { url = "/whoami", interval_ms = 100 }
"#;

#[tokio::test]
async fn a_failing_backend_trips_the_breaker_clients_keep_stale_data_and_recover() {
    let backend = TestBackend::start().await;
    let symbols: Vec<String> = (0..10).map(|n| format!("S{n}")).collect();
    for symbol in &symbols {
        backend.set(
            &format!("/p/{symbol}"),
            Behaviour::Json(format!("{{\"{symbol}\":1}}")),
        );
    }
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut clients = Vec::new();
    for symbol in &symbols {
        let mut client = SseClient::connect(sidecar.port, &format!("/prices/{symbol}"), &[]).await;
        client.next_event().await.unwrap();
        clients.push(client);
    }

    let failing_since = Instant::now();
    for symbol in &symbols {
        backend.set(&format!("/p/{symbol}"), Behaviour::Status(500));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut times: Vec<Instant> = backend
        .all_seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/p/") && s.at >= failing_since)
        .map(|s| s.at)
        .collect();
    times.sort();
    // Ten pollers at 50 ms with per-topic backoff alone would send ~80 requests in 3 s.
    // The breaker opens after 5 failures and then lets one probe through at a time, after
    // 200 ms, 400 ms, then 800 ms (doubling to backoff_max_ms).
    assert!(times.len() <= 25, "{} requests while failing", times.len());
    let probes: Vec<Duration> = times.windows(2).skip(12).map(|w| w[1] - w[0]).collect();
    assert!(
        probes.iter().all(|gap| *gap >= Duration::from_millis(150)),
        "probes are spaced by the open circuit: {probes:?}"
    );

    // Clients keep the last state, marked stale, with its age.
    for client in &mut clients {
        let notice = client.next_event().await.unwrap();
        assert_eq!(notice.event.as_deref(), Some("stale"));
        assert_eq!(notice.data.as_deref(), Some("{\"stale\":true}"));
    }
    let short = get(sidecar.port, "/prices/S3", &[]).await;
    assert_eq!(short.status, 200);
    assert_eq!(short.text(), "{\"S3\":1}");
    assert_eq!(short.header("x-sidestream-stale"), Some("true"));
    assert!(short.header("age").unwrap().parse::<u64>().unwrap() >= 2);

    // Recovery: fresh data within one (capped) probe interval plus one poll interval.
    let recovered_at = Instant::now();
    for symbol in &symbols {
        backend.set(
            &format!("/p/{symbol}"),
            Behaviour::Json(format!("{{\"{symbol}\":2}}")),
        );
    }
    for (symbol, client) in symbols.iter().zip(&mut clients) {
        let fresh = client.next_event().await.unwrap();
        assert_eq!(fresh.data.as_deref(), Some("{\"stale\":false}"));
        assert_eq!(
            client.next_event().await.unwrap().data,
            Some(format!("{{\"{symbol}\":2}}"))
        );
    }
    assert!(
        recovered_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        recovered_at.elapsed()
    );
}

#[tokio::test]
async fn the_backends_max_age_paces_the_poller() {
    let backend = TestBackend::start().await;
    backend.set("/p/SLOW", Behaviour::JsonMaxAge("{\"v\":1}".into(), 1));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = SseClient::connect(sidecar.port, "/prices/SLOW", &[]).await;
    client.next_event().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // 50 ms interval, but the backend said max-age=1: about one request per second.
    let hits = backend.hit_count("/p/SLOW");
    assert!((2..=4).contains(&hits), "{hits} requests in 2.5 s");
}

#[tokio::test]
async fn different_credentials_never_share_an_instance_or_data() {
    let backend = TestBackend::start().await;
    backend.set("/whoami", Behaviour::EchoHeader("authorization"));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut alice = SseClient::connect(sidecar.port, "/me", &[("Authorization", "Bearer alice")]).await;
    let mut bob = SseClient::connect(sidecar.port, "/me", &[("Authorization", "Bearer bob")]).await;
    let mut anonymous = SseClient::connect(sidecar.port, "/me", &[]).await;
    assert_eq!(
        alice.next_event().await.unwrap().data.as_deref(),
        Some("{\"authorization\":\"Bearer alice\"}")
    );
    assert_eq!(
        bob.next_event().await.unwrap().data.as_deref(),
        Some("{\"authorization\":\"Bearer bob\"}")
    );
    assert_eq!(
        anonymous.next_event().await.unwrap().data.as_deref(),
        Some("{\"authorization\":\"\"}")
    );
    assert_eq!(sidecar.registry.len(), 3, "one instance per identity");
    let again = get(sidecar.port, "/me", &[("Authorization", "Bearer alice")]).await;
    assert_eq!(again.text(), "{\"authorization\":\"Bearer alice\"}");
    assert_eq!(sidecar.registry.len(), 3);
    // Identities are not printed in logs or metrics.
    for topic in sidecar.registry.topics() {
        assert!(!topic.key().to_string().contains("alice"));
    }
}
