//! A new SSE stream's request for an instance that already lives here is served from the
//! head sidestream read itself, before any pingora session exists (`downstream::sse_lane`):
//! the same head, CORS, resume and events as through pingora. Anything the lane does not
//! serve (a new instance, `HEAD`, `Connection: close`, a bad `delta`) is served by pingora as
//! before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw::raw_request;
use common::*;
use sidestream::hub::TopicKey;
use sidestream::metrics::METRICS;

const TOPICS: &str = r#"
[[topic]]
name = "feed"
path = "/feed"
mode = "events"
history_max_messages = 64
source.poll = { url = "/feed-source", interval_ms = 50, jitter_ms = 0 }

[cors]
allowed_origins = ["https://app.example.com"]
"#;

const ALLOWED: &str = "https://app.example.com";

fn opened_directly() -> u64 {
    METRICS.sse_streams_opened_directly.get()
}

#[tokio::test]
async fn a_stream_of_a_live_instance_is_opened_by_the_lane_as_pingora_would() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("1".into()));
    let sidecar = TestSidecar::start(backend.port, "retry_ms = 1000", TOPICS).await;

    // The first client creates the instance: that is pingora's (and the quota's) to do.
    let before = opened_directly();
    let mut first = SseClient::connect(sidecar.port, "/feed", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        opened_directly(),
        before,
        "a new instance is opened through pingora"
    );
    let one = first.next_event().await.expect("the first event");
    assert_eq!(one.data.as_deref(), Some("1"));
    let cursor = one.id.clone().expect("an id");
    backend.set("/feed-source", Behaviour::Json("2".into()));
    let two = first.next_event().await.expect("the second event");
    assert_eq!(two.data.as_deref(), Some("2"));

    // The instance lives: the lane opens the next stream, with the head pingora's path
    // writes, the CORS headers for an allowed origin, and the resume from the cursor.
    let mut resumed = SseClient::connect(
        sidecar.port,
        "/feed",
        &[("Origin", ALLOWED), ("Last-Event-ID", cursor.as_str())],
    )
    .await;
    assert_eq!(opened_directly(), before + 1, "opened by the lane");
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.header("content-type"), Some("text/event-stream"));
    assert_eq!(resumed.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(resumed.header("x-accel-buffering"), Some("no"));
    assert_eq!(resumed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resumed.header("connection"), Some("keep-alive"));
    assert!(resumed.header("date").is_some());
    assert_eq!(resumed.header("vary"), Some("Origin"));
    assert_eq!(resumed.header("access-control-allow-origin"), Some(ALLOWED));
    let retry = resumed.next_block().await.expect("the retry hint");
    let retry_ms = retry.retry.expect("a retry hint");
    assert!((800..=1200).contains(&retry_ms), "retry_ms ± 20 %: {retry_ms}");
    let replayed = resumed.next_event().await.expect("the missed event");
    assert_eq!((replayed.data.as_deref(), &replayed.id), (Some("2"), &two.id));
    backend.set("/feed-source", Behaviour::Json("3".into()));
    for client in [&mut first, &mut resumed] {
        let three = client.next_event().await.expect("the next event, live");
        assert_eq!(three.data.as_deref(), Some("3"));
    }

    // An unknown cursor is told `reset` there too.
    let mut unknown = SseClient::connect(sidecar.port, "/feed", &[("Last-Event-ID", "zzzzzz-9")]).await;
    assert_eq!(opened_directly(), before + 2);
    let reset = unknown.next_event().await.expect("a reset");
    assert_eq!(reset.event.as_deref(), Some("reset"));

    // What the lane leaves to pingora is served as before.
    let head = raw_request(sidecar.port, "HEAD", "/feed", &[("Accept", "text/event-stream")]).await;
    assert_eq!(head.status, 200, "{}", head.head);
    assert!(head.body.is_empty());
    let bad_delta = SseClient::connect(sidecar.port, "/feed?delta=xml", &[]).await;
    assert_eq!(
        bad_delta.status, 400,
        "a bad delta format is refused with its reason"
    );
    assert_eq!(opened_directly(), before + 2, "neither went through the lane");
    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    assert_eq!(topic.subscriber_count(), 3, "the three streams are subscribed");
}
