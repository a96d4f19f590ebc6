//! permessage-deflate: every hub message is compressed once, whatever the number of clients,
//! and every client inflates it correctly. (Its own test binary: the compression counter is
//! process-wide.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::ws::*;
use common::*;
use sidestream::hub::{Payload, TopicKey};
use sidestream::metrics::METRICS;

const TOPIC: &str = r#"
[[topic]]
name = "feed"
path = "/feed"
mode = "events"
source.poll = { url = "/feed-source", interval_ms = 60000 }
websocket = { deflate = true, deflate_min_bytes = 64 }
"#;

#[tokio::test]
async fn each_message_is_deflated_once_for_all_clients() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let sidecar = TestSidecar::start(backend.port, "queue_max_messages = 64", TOPIC).await;
    // Create the instance and let the poller's first message pass: clients then start "from now".
    get(sidecar.port, "/feed?wait=5", &[]).await;

    let mut compressed_clients = Vec::new();
    for _ in 0..20 {
        let client = WsClient::connect(
            sidecar.port,
            "/feed",
            Some("permessage-deflate; client_max_window_bits"),
            &[],
        )
        .await;
        assert_eq!(client.status, 101);
        assert_eq!(
            client.header("sec-websocket-extensions").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        compressed_clients.push(client);
    }
    let mut plain = WsClient::connect(sidecar.port, "/feed", None, &[]).await;
    assert_eq!(plain.header("sec-websocket-extensions"), None);

    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    eventually("all subscribed", || topic.subscriber_count() == 21).await;
    // Below deflate_min_bytes: sent plain even to clients that negotiated deflate.
    topic.publish(Payload {
        data: Bytes::from_static(b"\"small\""),
        ..Payload::default()
    });
    for client in compressed_clients.iter_mut().chain([&mut plain]) {
        let small = client.read_frame().await.unwrap();
        assert!(!small.rsv1);
        assert_eq!(small.payload, b"\"small\"");
    }

    let before = METRICS.websocket_deflate_compressions.get();
    let messages: Vec<String> = (0..5)
        .map(|n| format!("{{\"n\":{n},\"text\":\"{}\"}}", "compressible ".repeat(50)))
        .collect();
    for message in &messages {
        topic.publish(Payload {
            data: Bytes::from(message.clone()),
            ..Payload::default()
        });
    }
    for client in &mut compressed_clients {
        for expected in &messages {
            let frame = client.read_frame().await.unwrap();
            assert!(frame.rsv1, "compressed on the wire");
            assert!(frame.payload.len() < expected.len() / 3);
            assert_eq!(inflate(&frame.payload), expected.as_bytes());
        }
    }
    for expected in &messages {
        let frame = plain.read_frame().await.unwrap();
        assert!(!frame.rsv1);
        assert_eq!(frame.text(), *expected);
    }
    assert_eq!(
        METRICS.websocket_deflate_compressions.get() - before,
        messages.len() as u64,
        "one compression per message, not per client"
    );
}
