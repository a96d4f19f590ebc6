//! permessage-deflate: every hub message is compressed once per window size, whatever the
//! number of clients, and every client inflates it correctly. (Its own test binary: the
//! compression counter is process-wide, and the tests here take turns with it.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::ws::*;
use common::*;
use sidestream::hub::{Payload, TopicKey};
use sidestream::metrics::METRICS;

/// The compression counter is process-wide: tests that measure it run one at a time.
static COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _counter = COUNTER.lock().await;
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

/// A JSON message whose text repeats every 1000 bytes: a compressor with a 32 KiB window
/// refers back that far, one with a 512-byte window must not.
fn far_repeating_message(n: usize) -> String {
    let block: String = (0..1000usize)
        .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz"[(i * i + n) % 26]))
        .collect();
    format!("{{\"n\":{n},\"text\":\"{}\"}}", block.repeat(8))
}

#[tokio::test]
async fn smaller_server_windows_are_negotiated_and_deflated_once_per_window_size() {
    let _counter = COUNTER.lock().await;
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let sidecar = TestSidecar::start(backend.port, "queue_max_messages = 64", TOPIC).await;
    get(sidecar.port, "/feed?wait=5", &[]).await;

    // Two clients per window size from 9 to 14 bits, and two with the default 15.
    let mut clients = Vec::new();
    for bits in 9..=15u8 {
        for _ in 0..2 {
            let offer = if bits == 15 {
                "permessage-deflate; client_max_window_bits".to_string()
            } else {
                format!("permessage-deflate; server_max_window_bits={bits}; client_max_window_bits")
            };
            let client = WsClient::connect(sidecar.port, "/feed", Some(&offer), &[]).await;
            assert_eq!(client.status, 101);
            let expected = if bits == 15 {
                "permessage-deflate; server_no_context_takeover".to_string()
            } else {
                format!("permessage-deflate; server_no_context_takeover; server_max_window_bits={bits}")
            };
            assert_eq!(client.header("sec-websocket-extensions"), Some(expected));
            clients.push((bits, client));
        }
    }
    // 8 bits cannot be honoured (zlib's smallest raw window is 9): declined, served plain.
    let mut eight = WsClient::connect(
        sidecar.port,
        "/feed",
        Some("permessage-deflate; server_max_window_bits=8"),
        &[],
    )
    .await;
    assert_eq!(eight.status, 101);
    assert_eq!(eight.header("sec-websocket-extensions"), None);

    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    eventually("all subscribed", || topic.subscriber_count() == 15).await;
    let before = METRICS.websocket_deflate_compressions.get();
    let messages: Vec<String> = (0..3).map(far_repeating_message).collect();
    for message in &messages {
        topic.publish(Payload {
            data: Bytes::from(message.clone()),
            ..Payload::default()
        });
    }
    for (bits, client) in &mut clients {
        for expected in &messages {
            let frame = client.read_frame().await.unwrap();
            assert!(frame.rsv1, "compressed on the wire");
            // Inflated as a client that keeps only its negotiated window.
            assert_eq!(
                inflate_with_window(&frame.payload, *bits).as_deref(),
                Ok(expected.as_bytes()),
                "{bits} bits"
            );
            if *bits == 15 {
                // The check is sharp: full-window bytes do not pass for a 9-bit client.
                assert!(inflate_with_window(&frame.payload, 9).is_err());
            }
        }
    }
    for expected in &messages {
        let frame = eight.read_frame().await.unwrap();
        assert!(!frame.rsv1);
        assert_eq!(frame.text(), *expected);
    }
    assert_eq!(
        METRICS.websocket_deflate_compressions.get() - before,
        (messages.len() * 7) as u64,
        "one compression per message and window size, not per client"
    );
}
