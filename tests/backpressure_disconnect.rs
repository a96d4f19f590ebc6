//! The `disconnect` policy end to end: a stalled client is cut off and resumes from history
//! without loss. (Its own binary: it needs a quiet server to stall one socket reliably.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use sidestream::hub::TopicKey;

const TOPICS: &str = r#"
[[topic]]
name = "cut"
path = "/cut"
mode = "events"
on_full = "disconnect"
source.push = {}
queue_max_messages = 20
history_max_messages = 30000
history_max_bytes = 536870912
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_and_the_client_resumes_from_history_without_loss() {
    let backend = TestBackend::start().await;
    // A short write deadline: the blocked write to the stalled socket is given up quickly.
    let sidecar = TestSidecar::start(backend.port, "write_timeout_ms = 500", TOPICS).await;
    let mut client = SseClient::connect_slow(sidecar.port, "/cut", &[]).await;
    let key = TopicKey::new("cut", vec![]);
    eventually("subscribed", || {
        sidecar
            .registry
            .get(&key)
            .is_some_and(|t| t.subscriber_count() == 1)
    })
    .await;
    let topic = sidecar.registry.get(&key).unwrap();
    // Publish until the policy has cut the client off (socket buffers absorb a varying
    // amount first), within a bound.
    let start = topic.cursor();
    let mut published = 0;
    while topic
        .counters
        .disconnected
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(published < 20_000, "the stalled client was never disconnected");
        published += 1;
        topic.publish(numbered_payload(published, 4096));
        if published % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let total = published + 100;
    for n in published + 1..=total {
        topic.publish(numbered_payload(n, 4096));
    }
    let mut seen = Vec::new();
    // Where the client stands if the cut came before it read a single event.
    let mut last_id = start.to_string();
    while let Some(event) = client.next_event().await {
        seen.push(leading_number(&event.data.unwrap()));
        last_id = event.id.unwrap();
    }
    assert!(client.ended, "the slow client was disconnected");
    assert!(seen.len() < total);
    let mut resumed = SseClient::connect(sidecar.port, "/cut", &[("Last-Event-ID", last_id.as_str())]).await;
    while seen.len() < total {
        seen.push(leading_number(&resumed.next_event().await.unwrap().data.unwrap()));
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
}
