//! The backend sees one request per topic instance per interval, however many clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 100, jitter_ms = 0 }
"#;

/// Backend requests on `path` during `window`, counted from the moment the instance has
/// its first state.
async fn polls_during(backend: &TestBackend, path: &str, window: Duration) -> usize {
    let before = backend.hit_count(path);
    tokio::time::sleep(window).await;
    backend.hit_count(path) - before
}

#[tokio::test]
async fn two_hundred_sse_clients_cost_the_backend_what_one_client_does() {
    let backend = TestBackend::start().await;
    backend.set("/prices/MANY", Behaviour::Json("{\"p\":1}".into()));
    backend.set("/prices/ONE", Behaviour::Json("{\"p\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPIC).await;

    let mut many = Vec::new();
    for _ in 0..200 {
        many.push(SseClient::connect(sidecar.port, "/api/prices/MANY", &[]).await);
    }
    for client in &mut many {
        assert!(client.next_event().await.is_some(), "every client gets the state");
    }
    let mut one = SseClient::connect(sidecar.port, "/api/prices/ONE", &[]).await;
    one.next_event().await.unwrap();

    let window = Duration::from_millis(1500);
    let (with_many, with_one) = tokio::join!(
        polls_during(&backend, "/prices/MANY", window),
        polls_during(&backend, "/prices/ONE", window)
    );
    let topic = sidecar
        .registry
        .get(&sidecar_key("MANY"))
        .expect("one instance for all 200");
    assert_eq!(topic.subscriber_count(), 200);
    assert_eq!(sidecar.registry.len(), 2);
    assert!(
        with_many.abs_diff(with_one) <= 1,
        "200 clients: {with_many} polls, 1 client: {with_one} polls"
    );
    // About one request per interval: 15 in 1.5 s at 100 ms (± one interval).
    assert!((13..=17).contains(&with_many), "{with_many} polls in 1.5 s");
    // Every request after the first was conditional, and the backend answered 304.
    let hits = backend.hits("/prices/MANY");
    assert!(hits
        .iter()
        .skip(1)
        .all(|h| h.headers.contains_key("if-none-match")));
}

fn sidecar_key(symbol: &str) -> sidestream::hub::TopicKey {
    sidestream::hub::TopicKey::new("prices", vec![symbol.into()])
}
