//! Per-client shares of topic instances: one client cannot create more than its share, nor
//! faster than its rate; joining an existing instance is never refused; the share comes
//! back when the instance is reaped. Each refusal counts under its own `limit_hits` label.
//! (The per-identity share is unit-tested in `downstream::instance_quota`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, get, metric, Behaviour, SseClient, TestBackend, TestSidecar};

fn topics(linger_ms: u64, limits: &str) -> String {
    format!(
        r#"
[[topic]]
name = "prices"
path = "/prices/{{symbol}}"
source.poll = {{ url = "/backend/prices/{{symbol}}", interval_ms = 100 }}
idle_linger_ms = {linger_ms}

[[topic]]
name = "mine"
path = "/mine/{{symbol}}"
source.poll = {{ url = "/backend/prices/{{symbol}}", interval_ms = 100 }}
forward_headers = ["authorization"]
idle_linger_ms = {linger_ms}

[limits]
{limits}
"#
    )
}

async fn hits(sidecar: &TestSidecar, limit: &str) -> f64 {
    metric(
        sidecar.admin_port,
        "sidestream_limit_hits_total",
        &[("limit", limit)],
    )
    .await
}

#[tokio::test]
async fn one_address_gets_its_share_of_instances_and_it_comes_back_after_the_linger() {
    let backend = TestBackend::start().await;
    for n in 0..10 {
        backend.set(
            &format!("/backend/prices/S{n}"),
            Behaviour::Json(format!("{{\"n\":{n}}}")),
        );
    }
    let sidecar = TestSidecar::start(
        backend.port,
        "",
        &topics(1000, "max_topic_instances_per_client = 3"),
    )
    .await;
    let port = sidecar.port;
    for n in 0..3 {
        assert_ne!(get(port, &format!("/prices/S{n}"), &[]).await.status, 429);
    }
    let refused = get(port, "/prices/S3", &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(
        refused.text().contains("share of topic instances"),
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    // SSE: 200 + retry + end, which an EventSource survives.
    let mut sse = SseClient::connect(port, "/prices/S4", &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_block().await.expect("a retry hint").retry.is_some());
    assert!(sse.next_block().await.is_none());
    // Joining an existing instance is never refused, and another address has its own share.
    assert_ne!(get(port, "/prices/S0", &[]).await.status, 429);
    let mut other = SseClient::connect_from("127.0.0.2", port, "/prices/S5").await;
    assert!(
        other.next_event().await.is_some(),
        "another address creates its own"
    );
    drop(other);
    assert_eq!(sidecar.registry.len(), 4);
    assert!(hits(&sidecar, "topic_instances_per_ip").await >= 2.0);

    // Reaped after the linger: the share is given back.
    let registry = sidecar.registry.clone();
    eventually("idle instances reaped", || registry.is_empty()).await;
    let mut admitted = 0;
    for _ in 0..100 {
        if get(port, "/prices/S6", &[]).await.status != 429 {
            admitted += 1;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(admitted, 1, "a new instance once the old ones are gone");
}

#[tokio::test]
async fn creations_are_rate_limited_per_address() {
    let backend = TestBackend::start().await;
    for n in 0..10 {
        backend.set(
            &format!("/backend/prices/S{n}"),
            Behaviour::Json(format!("{{\"n\":{n}}}")),
        );
    }
    let sidecar = TestSidecar::start(
        backend.port,
        "",
        &topics(
            60_000,
            "topic_instance_creations_per_client_per_minute = 2\nmax_topic_instances_per_client = 100",
        ),
    )
    .await;
    let port = sidecar.port;
    assert_ne!(get(port, "/prices/S0", &[]).await.status, 429);
    assert_ne!(get(port, "/prices/S1", &[]).await.status, 429);
    let refused = get(port, "/prices/S2", &[]).await;
    assert_eq!(refused.status, 429);
    assert!(refused.text().contains("too fast"), "{}", refused.text());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=31).contains(&retry_after), "Retry-After {retry_after}");
    assert_ne!(
        get(port, "/prices/S1", &[]).await.status,
        429,
        "joining is never refused"
    );
    assert!(hits(&sidecar, "topic_instance_creations_per_ip").await >= 1.0);
}
