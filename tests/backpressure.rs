//! Slow clients: one that stops reading costs at most its queue limit and delays nobody;
//! `conflate` and `drop_oldest` do what they say (`disconnect`: backpressure_disconnect.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sidestream::hub::{Topic, TopicKey};

const TOPICS: &str = r#"
[[topic]]
name = "state"
path = "/state"
mode = "state"
on_full = "conflate"
source.push = {}
queue_max_messages = 100000
queue_max_bytes = 262144

[[topic]]
name = "drop"
path = "/drop"
mode = "events"
on_full = "drop_oldest"
source.push = {}
queue_max_messages = 20
history_max_messages = 10000

[[topic]]
name = "drop-ws"
path = "/drop-ws"
mode = "events"
on_full = "drop_oldest"
source.push = {}
queue_max_messages = 20
history_max_messages = 10000
websocket = { envelope = "json" }
"#;

async fn instance(sidecar: &TestSidecar, name: &str, subscribers: usize) -> Arc<Topic> {
    let key = TopicKey::new(name, vec![]);
    eventually("subscribers", || {
        sidecar
            .registry
            .get(&key)
            .is_some_and(|t| t.subscriber_count() == subscribers)
    })
    .await;
    sidecar.registry.get(&key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_delays_nobody_and_costs_at_most_its_queue() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let stalled = SseClient::connect_slow(sidecar.port, "/state", &[]).await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        readers.push(SseClient::connect(sidecar.port, "/state", &[]).await);
    }
    let topic = instance(&sidecar, "state", 101).await;
    let count = 1000;
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(count);
                while seen.len() < count {
                    seen.push(leading_number(
                        &client.next_event().await.expect("open").data.unwrap(),
                    ));
                }
                seen
            })
        })
        .collect();
    let mut largest_queue = 0;
    for n in 0..count {
        topic.publish(numbered_payload(n, 1024));
        largest_queue = largest_queue.max(topic.queue_depth().largest_bytes);
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for reader in reading {
        let seen = tokio::time::timeout(WAIT, reader)
            .await
            .expect("readers finish while one stalls")
            .unwrap();
        assert_eq!(seen, (0..count).collect::<Vec<_>>(), "every message, in order");
    }
    assert!(
        largest_queue <= 262_144,
        "the stalled client's queue stayed within its limit: {largest_queue}"
    );
    drop(stalled);
}

/// Publishes `count` 4 KiB messages while `client` is not reading.
async fn flood(topic: &Topic, count: usize) {
    for n in 1..=count {
        topic.publish(numbered_payload(n, 4096));
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_delivers_the_newest_state() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = SseClient::connect_slow(sidecar.port, "/state", &[]).await;
    let topic = instance(&sidecar, "state", 1).await;
    // 8 MiB at a client that is not reading: far more than socket buffers hold.
    let mut largest_queue = 0;
    for n in 1..=2000 {
        topic.publish(numbered_payload(n, 4096));
        largest_queue = largest_queue.max(topic.queue_depth().largest_bytes);
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        largest_queue <= 262_144,
        "queue within queue_max_bytes: {largest_queue}"
    );
    assert!(largest_queue > 131_072, "the queue did fill: {largest_queue}");
    assert!(
        topic.counters.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "conflations counted"
    );
    let mut received = 0;
    let last = loop {
        let n = leading_number(&client.next_event().await.unwrap().data.unwrap());
        received += 1;
        if n == 2000 {
            break n;
        }
    };
    assert_eq!(last, 2000, "the newest state arrives");
    assert!(received < 2000, "older states were skipped ({received} received)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_signals_the_gap() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = SseClient::connect_slow(sidecar.port, "/drop", &[]).await;
    let topic = instance(&sidecar, "drop", 1).await;
    flood(&topic, 2000).await;
    let mut resets = 0;
    let mut previous = 0;
    loop {
        let event = client.next_event().await.unwrap();
        if event.event.as_deref() == Some("reset") {
            let notice: serde_json::Value = serde_json::from_str(&event.data.unwrap()).unwrap();
            assert!(notice["skipped"].as_u64().unwrap() > 0);
            resets += 1;
            continue;
        }
        let n = leading_number(&event.data.unwrap());
        assert!(n > previous, "in order");
        if n != previous + 1 {
            assert!(
                resets > 0,
                "a jump from {previous} to {n} is announced by a reset"
            );
        }
        previous = n;
        if n == 2000 {
            break;
        }
    }
    assert!(resets > 0);
}

/// WebSocket with the JSON envelope: a gap `drop_oldest` leaves is announced before the
/// next message, as SSE does, with the position before it and the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_signals_the_gap_on_websocket() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut client = common::ws::WsClient::connect(sidecar.port, "/drop-ws", None, &[]).await;
    assert_eq!(client.status, 101);
    let topic = instance(&sidecar, "drop-ws", 1).await;
    // The client reads nothing meanwhile: its socket fills, then its queue overflows.
    flood(&topic, 4000).await;
    let mut resets = 0;
    let mut previous = 0;
    while previous < 4000 {
        let frame = client.read_message().await;
        let message: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
        if message["reset"] == true {
            assert!(message["skipped"].as_u64().unwrap() > 0, "{message}");
            resets += 1;
            continue;
        }
        let n = leading_number(message["data"].as_str().unwrap_or(&message["data"].to_string()));
        assert!(n > previous, "in order");
        assert!(
            n == previous + 1 || resets > 0,
            "a jump from {previous} to {n} is announced by a reset"
        );
        previous = n;
    }
    assert!(resets > 0, "messages were dropped and announced");
}

/// Long poll on a `drop_oldest` topic: an answer is every message after the cursor (from
/// history when the request's queue dropped some), or says `reset` with `skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_long_polls_leave_no_silent_gap() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let first = get(sidecar.port, "/drop?wait=0.05", &[]).await;
    let topic = sidecar
        .registry
        .get(&TopicKey::new("drop", vec![]))
        .unwrap_or_else(|| panic!("{} {}", first.status, first.text()));
    let mut cursor = topic.cursor().to_string();
    let port = sidecar.port;
    let path = format!("/drop?wait=5&cursor={cursor}");
    let held = tokio::spawn(async move { get(port, &path, &[]).await });
    let topic_ref = topic.clone();
    eventually("the poll is held", || topic_ref.subscriber_count() == 1).await;
    for n in 1..=2000 {
        topic.publish(numbered_payload(n, 4096));
    }
    let mut replies = vec![held.await.unwrap()];
    let mut previous = 0;
    loop {
        let reply = replies.pop().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let batch: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let reset = batch["reset"] == true;
        if let Some(skipped) = batch.get("skipped") {
            assert!(reset && skipped.as_u64().unwrap() > 0, "{batch}");
        }
        for message in batch["messages"].as_array().unwrap() {
            let n = leading_number(message["data"].as_str().unwrap_or(&message["data"].to_string()));
            assert!(n == previous + 1 || reset, "a silent jump from {previous} to {n}");
            previous = n;
        }
        cursor = batch["cursor"].as_str().unwrap().to_string();
        if previous >= 2000 {
            break;
        }
        replies.push(get(sidecar.port, &format!("/drop?wait=5&cursor={cursor}"), &[]).await);
    }
}
