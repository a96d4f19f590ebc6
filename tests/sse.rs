//! SSE end to end: headers, framing, state-first, resume by Last-Event-ID and by query,
//! reset on unknown cursors, keepalive, and cleanup when clients go away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use sidestream::hub::{Payload, TopicKey};

const STATE_TOPIC: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 50, jitter_ms = 0 }
event = "price"
"#;

const EVENT_TOPIC: &str = r#"
[[topic]]
name = "feed"
path = "/feed"
mode = "events"
source.poll = { url = "/feed-source", interval_ms = 50, jitter_ms = 0 }
"#;

fn key(name: &str, params: &[&str]) -> TopicKey {
    TopicKey::new(name, params.iter().map(|p| p.to_string()).collect())
}

#[tokio::test]
async fn state_topic_stream_has_headers_retry_and_latest_state_first() {
    let backend = TestBackend::start().await;
    backend.set("/prices/AAPL", Behaviour::Json("{\n\"price\": 1\n}".into()));
    let sidecar = TestSidecar::start(backend.port, "retry_ms = 1000", STATE_TOPIC).await;

    let mut client = SseClient::connect(sidecar.port, "/api/prices/AAPL", &[]).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    let first = client.next_block().await.expect("retry block");
    let retry = first.retry.expect("the stream opens with retry:");
    assert!((800..=1200).contains(&retry), "jittered retry {retry}");

    let event = client.next_event().await.expect("state");
    assert_eq!(event.event.as_deref(), Some("price"));
    assert_eq!(
        event.data.as_deref(),
        Some("{\n\"price\": 1\n}"),
        "multi-line data survives"
    );
    let id = event.id.expect("every event has an id");
    assert!(id.ends_with("-1"), "first message has seq 1: {id}");

    // A second client joining later gets the latest state at once, same id.
    let mut late = SseClient::connect(sidecar.port, "/api/prices/AAPL", &[]).await;
    assert_eq!(late.next_event().await.unwrap().id.as_deref(), Some(id.as_str()));

    // Only a change becomes a message.
    backend.set("/prices/AAPL", Behaviour::Json("{\"price\": 2}".into()));
    let next = client.next_event().await.expect("change");
    assert_eq!(next.data.as_deref(), Some("{\"price\": 2}"));
    assert!(next.id.unwrap().ends_with("-2"));
}

#[tokio::test]
async fn resume_by_header_and_by_query_gets_exactly_what_was_missed() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("\"start\"".into()));
    let sidecar = TestSidecar::start(backend.port, "", EVENT_TOPIC).await;

    let mut client = SseClient::connect(sidecar.port, "/feed", &[]).await;
    let topic = sidecar.registry.get(&key("feed", &[])).expect("instance exists");
    // An event topic streams "from now": the poller's first message is the first event.
    assert_eq!(
        client.next_event().await.unwrap().data.as_deref(),
        Some("\"start\"")
    );
    let publish = |text: String| {
        topic.publish(Payload {
            data: Bytes::from(text),
            ..Payload::default()
        })
    };
    for n in 0..3 {
        publish(format!("e{n}"));
    }
    let mut last_id = String::new();
    for n in 0..3 {
        let event = client.next_event().await.unwrap();
        assert_eq!(event.data, Some(format!("e{n}")));
        last_id = event.id.unwrap();
    }
    drop(client);

    for n in 3..8 {
        publish(format!("e{n}"));
    }
    // Both passes resume from the same cursor, so the second also gets the first's sentinel.
    let mut expected: Vec<String> = (3..8).map(|n| format!("e{n}")).collect();
    for (pass, header, path) in [
        ("header", Some(last_id.as_str()), "/feed".to_string()),
        ("query", None, format!("/feed?last_event_id={last_id}")),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("Last-Event-ID", h)).into_iter().collect();
        let mut resumed = SseClient::connect(sidecar.port, &path, &headers).await;
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            seen.push(resumed.next_event().await.unwrap().data.unwrap());
        }
        assert_eq!(seen, expected, "resume via {pass}");
        // Nothing else is pending: the next event is live, not a duplicate.
        let sentinel = format!("live-{pass}");
        publish(sentinel.clone());
        assert_eq!(resumed.next_event().await.unwrap().data, Some(sentinel.clone()));
        expected.push(sentinel);
    }
}

#[tokio::test]
async fn unknown_or_malformed_cursor_gets_an_explicit_reset() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("\"start\"".into()));
    let sidecar = TestSidecar::start(backend.port, "", EVENT_TOPIC).await;
    let _first = SseClient::connect(sidecar.port, "/feed", &[]).await;
    let topic = sidecar.registry.get(&key("feed", &[])).unwrap();
    eventually("first message", || topic.cursor().seq >= 1).await;

    for stale in ["zzzzzzz-5", "not-a-cursor!"] {
        let mut client = SseClient::connect(sidecar.port, "/feed", &[("Last-Event-ID", stale)]).await;
        assert_eq!(client.status, 200, "never a non-200 for a stale cursor");
        let reset = client.next_event().await.unwrap();
        assert_eq!(reset.event.as_deref(), Some("reset"), "for {stale}");
        let position = reset.id.unwrap();
        assert!(
            position.ends_with("-0"),
            "reset continues before history: {position}"
        );
        // Then what history still holds.
        assert_eq!(
            client.next_event().await.unwrap().data.as_deref(),
            Some("\"start\"")
        );
    }
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let backend = TestBackend::start().await;
    backend.set("/prices/K", Behaviour::Json("1".into()));
    let sidecar = TestSidecar::start(backend.port, "keepalive_ms = 100", STATE_TOPIC).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/K", &[]).await;
    client.next_event().await.unwrap();
    let block = client.next_block().await.unwrap();
    assert_eq!(block.comments, vec!["keepalive"]);
}

#[tokio::test]
async fn clients_that_leave_leave_nothing_and_the_poller_stops_after_linger() {
    let backend = TestBackend::start().await;
    backend.set("/prices/Z", Behaviour::Json("1".into()));
    let sidecar = TestSidecar::start(backend.port, "idle_linger_ms = 300", STATE_TOPIC).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = SseClient::connect(sidecar.port, "/api/prices/Z", &[]).await;
        client.next_event().await.unwrap();
        clients.push(client);
    }
    let topic = sidecar.registry.get(&key("prices", &["Z"])).unwrap();
    assert_eq!(topic.subscriber_count(), 5);
    drop(clients);
    eventually("every subscriber gone", || topic.subscriber_count() == 0).await;
    eventually("instance reaped", || sidecar.registry.is_empty()).await;
    let polls = backend.hit_count("/prices/Z");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(backend.hit_count("/prices/Z") <= polls + 1, "the poller stopped");
}

#[tokio::test]
async fn shutdown_ends_streams_cleanly_with_a_retry_hint() {
    let backend = TestBackend::start().await;
    backend.set("/prices/S", Behaviour::Json("1".into()));
    let mut sidecar = TestSidecar::start(backend.port, "", STATE_TOPIC).await;
    let mut client = SseClient::connect(sidecar.port, "/api/prices/S", &[]).await;
    client.next_event().await.unwrap();
    sidecar.shutdown();
    let mut saw_retry = false;
    while let Some(block) = client.next_block().await {
        saw_retry |= block.retry.is_some();
    }
    assert!(saw_retry, "drain tells the client when to come back");
    assert!(client.ended);
}
