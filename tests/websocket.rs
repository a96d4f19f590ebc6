//! WebSocket on a topic's URL: messages and resume, heartbeats, inbound messages, close
//! codes for bad input, and isolation between clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ws::*;
use common::*;
use sidestream::hub::{Payload, TopicKey};

const TOPICS: &str = r#"
[[topic]]
name = "rooms"
path = "/rooms/{room}"
mode = "events"
source.poll = { url = "/rooms/{room}/latest", interval_ms = 60000 }
websocket = { envelope = "json", inbound = "/rooms/{room}/messages", max_message_bytes = 1024, ping_interval_ms = 200, pong_timeout_ms = 200 }

[[topic]]
name = "ticker"
path = "/ticker"
source.poll = { url = "/ticker-source", interval_ms = 60000 }
websocket = { ping_interval_ms = 60000 }

[[topic]]
name = "echo-room"
path = "/echo-room"
mode = "events"
source.poll = { url = "/echo-room-source", interval_ms = 60000 }
websocket = { inbound = "/echo/room", ping_interval_ms = 60000 }

[[topic]]
name = "chat"
path = "/chat"
source.poll = { url = "/chat-source", interval_ms = 60000 }
websocket = { subprotocols = ["v2.chat", "graphql-ws"], ping_interval_ms = 60000 }

[[topic]]
name = "no-ws"
path = "/no-ws"
transports = ["sse"]
source.poll = { url = "/no-ws-source" }
"#;

async fn setup() -> (std::sync::Arc<TestBackend>, TestSidecar) {
    let backend = TestBackend::start().await;
    backend.set("/rooms/a/latest", Behaviour::Json("\"hello\"".into()));
    backend.set("/ticker-source", Behaviour::Json("{\"t\":1}".into()));
    backend.set("/chat-source", Behaviour::Json("{\"c\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    (backend, sidecar)
}

fn room(name: &str) -> TopicKey {
    TopicKey::new("rooms", vec![name.into()])
}

#[tokio::test]
async fn raw_messages_state_first_and_json_envelope_with_resume() {
    let (_backend, sidecar) = setup().await;
    let mut ticker = WsClient::connect(sidecar.port, "/ticker", None, &[]).await;
    assert_eq!(ticker.status, 101);
    // State topic, raw envelope: the backend's body as a text message.
    assert_eq!(ticker.read_message().await.text(), "{\"t\":1}");

    let mut first = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    let hello: serde_json::Value = serde_json::from_slice(&first.read_message().await.payload).unwrap();
    assert_eq!(hello["data"], "hello");
    let first_id = hello["id"].as_str().unwrap().to_string();

    let topic = sidecar.registry.get(&room("a")).unwrap();
    for n in 1..=3 {
        topic.publish(Payload {
            data: Bytes::from(format!("{{\"n\":{n}}}")),
            ..Payload::default()
        });
    }
    let mut resumed =
        WsClient::connect(sidecar.port, &format!("/rooms/a?cursor={first_id}"), None, &[]).await;
    for n in 1..=3 {
        let message: serde_json::Value =
            serde_json::from_slice(&resumed.read_message().await.payload).unwrap();
        assert_eq!(message["data"]["n"], n);
    }
    let mut stale = WsClient::connect(sidecar.port, "/rooms/a?cursor=zzzzzzz-1", None, &[]).await;
    let reset: serde_json::Value = serde_json::from_slice(&stale.read_message().await.payload).unwrap();
    assert_eq!(reset["reset"], true);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let (_backend, sidecar) = setup().await;
    let mut silent = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    // The polite client answers every ping, from the start, on its own task.
    let mut polite = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    let polite_task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
        while tokio::time::Instant::now() < deadline {
            match polite.read_frame_within(Duration::from_millis(50)).await {
                Ok(Some(frame)) if frame.opcode == PING => {
                    polite.send_frame(true, false, PONG, &frame.payload, true).await
                }
                Ok(Some(frame)) => assert_ne!(frame.opcode, CLOSE, "polite client was closed"),
                Ok(None) => panic!("polite client was dropped"),
                Err(()) => {}
            }
        }
        polite
    });
    let started = tokio::time::Instant::now();
    // The silent client reads but never pongs.
    let mut saw_ping = false;
    let code = loop {
        match silent.read_frame().await {
            None => break None,
            Some(frame) if frame.opcode == PING => saw_ping = true,
            Some(frame) if frame.opcode == CLOSE => break frame.close_code(),
            Some(_) => {}
        }
    };
    let elapsed = started.elapsed();
    assert!(saw_ping);
    assert_eq!(code, Some(1001));
    // ping_interval_ms + pong_timeout_ms = 400 ms (plus scheduling slack).
    assert!(elapsed < Duration::from_millis(1500), "closed after {elapsed:?}");

    // The polite client is still connected well past that, and still gets messages.
    let mut polite = polite_task.await.unwrap();
    sidecar.registry.get(&room("a")).unwrap().publish(Payload {
        data: Bytes::from_static(b"\"still here\""),
        ..Payload::default()
    });
    let message: serde_json::Value = serde_json::from_slice(&polite.read_message().await.payload).unwrap();
    assert_eq!(message["data"], "still here");
}

#[tokio::test]
async fn inbound_messages_round_trip_to_the_sender_only() {
    let (backend, sidecar) = setup().await;
    backend.set("/rooms/a/messages", Behaviour::Json("{\"accepted\":true}".into()));
    // Create the instance and let the poller's first message pass before anyone listens.
    get(sidecar.port, "/rooms/a?wait=5", &[]).await;
    let mut sender = WsClient::connect(
        sidecar.port,
        "/rooms/a",
        None,
        &[("Authorization", "Bearer t0k3n")],
    )
    .await;
    let mut bystander = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    let topic = sidecar.registry.get(&room("a")).unwrap();
    eventually("both subscribed", || topic.subscriber_count() == 2).await;

    sender.send_text("{\"say\":\"hi\"}").await;
    let reply = sender.read_message().await;
    assert_eq!(reply.text(), "{\"accepted\":true}");
    let posted = backend.hits("/rooms/a/messages");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].method, "POST");
    assert_eq!(posted[0].body, "{\"say\":\"hi\"}".as_bytes());
    assert_eq!(posted[0].headers.get("authorization").unwrap(), "Bearer t0k3n");
    assert_eq!(posted[0].headers.get("content-type").unwrap(), "application/json");
    assert!(posted[0].headers.get("sec-websocket-key").is_none());

    // The bystander got nothing from that exchange: its next message is a hub message.
    sidecar.registry.get(&room("a")).unwrap().publish(Payload {
        data: Bytes::from_static(b"\"broadcast\""),
        ..Payload::default()
    });
    let next: serde_json::Value = serde_json::from_slice(&bystander.read_message().await.payload).unwrap();
    assert_eq!(next["data"], "broadcast");
}

#[tokio::test]
async fn client_messages_on_a_topic_without_inbound_close_with_1008() {
    let (_backend, sidecar) = setup().await;
    let mut client = WsClient::connect(sidecar.port, "/ticker", None, &[]).await;
    client.read_message().await;
    client.send_text("may I?").await;
    assert_eq!(client.read_until_close().await, Some(1008));
}

#[tokio::test]
async fn bad_frames_get_the_right_close_codes_and_spare_other_clients() {
    let (_backend, sidecar) = setup().await;
    let mut healthy = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    healthy.read_message().await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "oversized",
            encode_client_frame(true, false, TEXT, &[b'x'; 2000], true),
            1009,
        ),
        (
            "unmasked",
            encode_client_frame(true, false, TEXT, b"hi", false),
            1002,
        ),
        (
            "reserved bit without deflate",
            encode_client_frame(true, true, TEXT, b"hi", true),
            1002,
        ),
        (
            "invalid UTF-8",
            encode_client_frame(true, false, TEXT, &[0xC3, 0x28], true),
            1007,
        ),
        // Reserved opcodes are protocol errors (RFC 6455 §5.2): 1002, not yawc's 1003.
        (
            "reserved data opcode 0x3",
            encode_client_frame(true, false, 0x3, b"?", true),
            1002,
        ),
        (
            "reserved data opcode 0x7",
            encode_client_frame(true, false, 0x7, b"", true),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            encode_client_frame(true, false, 0xB, b"?", true),
            1002,
        ),
        (
            "reserved control opcode 0xF after a pong",
            [
                encode_client_frame(true, false, PONG, b"", true),
                encode_client_frame(true, false, 0xF, b"", true),
            ]
            .concat(),
            1002,
        ),
        (
            "oversized in fragments",
            [
                encode_client_frame(false, false, TEXT, &[b'x'; 600], true),
                encode_client_frame(true, false, 0x0, &[b'x'; 600], true),
            ]
            .concat(),
            1009,
        ),
        (
            "fragmented ping",
            encode_client_frame(false, false, PING, b"p", true),
            1002,
        ),
    ];
    for (name, bytes, expected) in cases {
        // An event topic streams "from now": nothing to read before misbehaving.
        let mut client = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
        assert_eq!(client.status, 101);
        client.send_raw(&bytes).await;
        assert_eq!(client.read_until_close().await, Some(expected), "{name}");
        let after = client.read_frame().await;
        assert!(
            after.is_none(),
            "{name}: TCP closed after the close frame, got {after:?}"
        );
    }

    sidecar.registry.get(&room("a")).unwrap().publish(Payload {
        data: Bytes::from_static(b"\"unaffected\""),
        ..Payload::default()
    });
    let message: serde_json::Value = serde_json::from_slice(&healthy.read_message().await.payload).unwrap();
    assert_eq!(message["data"], "unaffected");
}

#[tokio::test]
async fn bad_upgrades_and_switched_off_websocket_are_refused() {
    let (_backend, sidecar) = setup().await;
    let refused = WsClient::connect(sidecar.port, "/no-ws", None, &[]).await;
    assert_eq!(refused.status, 406);
    let reply = get(
        sidecar.port,
        "/ticker",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("Sec-WebSocket-Key"));
}

#[tokio::test]
async fn subprotocols_are_chosen_from_the_configured_list() {
    let (_backend, sidecar) = setup().await;
    // The client's first offer that the topic serves is echoed, and the socket works.
    let protocol = [("Sec-WebSocket-Protocol", "mqtt, graphql-ws, v2.chat")];
    let mut chosen = WsClient::connect(sidecar.port, "/chat", None, &protocol).await;
    assert_eq!(chosen.status, 101);
    assert_eq!(
        chosen.header("sec-websocket-protocol").as_deref(),
        Some("graphql-ws")
    );
    assert_eq!(chosen.read_message().await.text(), "{\"c\":1}");

    // No offer: connects as before, no subprotocol.
    let mut none = WsClient::connect(sidecar.port, "/chat", None, &[]).await;
    assert_eq!(none.status, 101);
    assert_eq!(none.header("sec-websocket-protocol"), None);
    assert_eq!(none.read_message().await.text(), "{\"c\":1}");

    // Only unknown offers: refused with a reason, before any subscription.
    let refused = get(
        sidecar.port,
        "/chat",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "mqtt, V2.CHAT"),
        ],
    )
    .await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("subprotocol"), "{}", refused.text());
    assert!(
        refused.text().contains("v2.chat, graphql-ws"),
        "{}",
        refused.text()
    );

    // A topic without a list ignores offers, as it always did.
    let ignored = WsClient::connect(
        sidecar.port,
        "/ticker",
        None,
        &[("Sec-WebSocket-Protocol", "mqtt")],
    )
    .await;
    assert_eq!(ignored.status, 101);
    assert_eq!(ignored.header("sec-websocket-protocol"), None);
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    let (_backend, mut sidecar) = setup().await;
    let mut client = WsClient::connect(sidecar.port, "/ticker", None, &[]).await;
    client.read_message().await;
    let closing = tokio::spawn(async move {
        let code = client.read_until_close().await;
        // Answer the close so the server's handshake completes.
        client
            .send_frame(true, false, CLOSE, &1001u16.to_be_bytes(), true)
            .await;
        code
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sidecar.shutdown();
    assert_eq!(closing.await.unwrap(), Some(1001));
}

/// The client's own forwarding headers never reach the backend: it sees exactly one
/// `X-Forwarded-For`, the TCP peer.
#[tokio::test]
async fn inbound_posts_carry_one_forwarded_for_the_peer() {
    let (backend, sidecar) = setup().await;
    backend.set("/rooms/a/messages", Behaviour::Json("{\"accepted\":true}".into()));
    get(sidecar.port, "/rooms/a?wait=5", &[]).await;
    let mut sender = WsClient::connect(
        sidecar.port,
        "/rooms/a",
        None,
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("True-Client-IP", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(sender.status, 101);
    sender.send_text("{\"say\":\"hi\"}").await;
    assert_eq!(sender.read_message().await.text(), "{\"accepted\":true}");
    let posted = backend.hits("/rooms/a/messages");
    assert_eq!(posted.len(), 1);
    let headers = &posted[0].headers;
    let forwarded_for: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded_for, ["127.0.0.1"], "{headers:?}");
    for name in ["forwarded", "x-real-ip", "x-forwarded-host", "true-client-ip"] {
        assert!(headers.get(name).is_none(), "{name} forwarded: {headers:?}");
    }
}

/// A slow inbound backend stalls neither deliveries to that client nor anything else on
/// its connection: the hub message published while the POST is in flight arrives first,
/// and then the reply.
#[tokio::test]
async fn a_slow_inbound_backend_does_not_stall_deliveries() {
    let (backend, sidecar) = setup().await;
    backend.set(
        "/rooms/a/messages",
        Behaviour::Delayed(400, "application/json", "{\"accepted\":true}".into()),
    );
    get(sidecar.port, "/rooms/a?wait=5", &[]).await;
    let mut client = WsClient::connect(sidecar.port, "/rooms/a", None, &[]).await;
    let topic = sidecar.registry.get(&room("a")).unwrap();
    eventually("subscribed", || topic.subscriber_count() == 1).await;
    client.send_text("{\"say\":\"hi\"}").await;
    eventually("the POST is in flight", || {
        backend.hit_count("/rooms/a/messages") == 1
    })
    .await;
    topic.publish(Payload {
        data: Bytes::from_static(b"\"broadcast\""),
        ..Payload::default()
    });
    let first: serde_json::Value = serde_json::from_slice(&client.read_message().await.payload).unwrap();
    assert_eq!(
        first["data"], "broadcast",
        "delivered while the POST was in flight"
    );
    assert_eq!(client.read_message().await.text(), "{\"accepted\":true}");
}

/// Several client messages in flight at once: the replies come back in the order sent.
#[tokio::test]
async fn inbound_replies_come_back_in_order() {
    let (backend, sidecar) = setup().await;
    backend.set("/echo-room-source", Behaviour::Json("0".into()));
    let mut client = WsClient::connect(sidecar.port, "/echo-room", None, &[]).await;
    assert_eq!(client.status, 101);
    let sent: Vec<String> = (0..6).map(|n| format!("message {n}")).collect();
    for text in &sent {
        client.send_text(text).await;
    }
    let mut replies = Vec::new();
    while replies.len() < sent.len() {
        let frame = client.read_message().await;
        let text = frame.text();
        // The topic's own first message (its state) may come in between; replies are the
        // echoed texts.
        if text.starts_with("message ") {
            replies.push(text);
        }
    }
    assert_eq!(replies, sent);
}
