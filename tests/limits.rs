//! Every `[limits]` entry and the WebSocket size and rate limits: each is hit, gives its
//! documented answer, and counts in `sidestream_limit_hits_total`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ws::WsClient;
use common::{get, metric, request, Behaviour, SseClient, TestBackend, TestSidecar, PUBLISH_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const WAIT: Duration = Duration::from_secs(5);

fn topics(limits: &str) -> String {
    format!(
        r#"
[[topic]]
name = "prices"
path = "/prices/{{symbol}}"
source.poll = {{ url = "/backend/prices/{{symbol}}", interval_ms = 50 }}
idle_linger_ms = 60000

[[topic]]
name = "chat"
path = "/chat"
source.push = {{}}
websocket = {{ max_message_bytes = 1000, max_frame_bytes = 500, inbound = "/echo/chat", inbound_messages_per_second = 5, deflate = false }}

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

/// Opens an SSE stream from `source` and keeps it; `None` when the server closed the
/// connection instead of answering.
async fn hold_stream(source: &str, port: u16) -> Option<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .ok()?;
    let request = "GET /prices/A HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("answer or close within the bound");
    match read {
        Ok(_) if head.starts_with(b"HTTP/1.1 200") => Some(stream),
        _ => None,
    }
}

#[tokio::test]
async fn connections_are_capped_globally_and_per_ip() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/A", Behaviour::Json("{}".into()));
    let sidecar = TestSidecar::start(
        backend.port,
        "",
        &topics("max_connections = 4\nmax_connections_per_ip = 2"),
    )
    .await;
    let port = sidecar.port;

    // Per IP (an address the harness's start-up probes never use).
    let first = hold_stream("127.0.0.9", port).await.expect("first from .9");
    let _second = hold_stream("127.0.0.9", port).await.expect("second from .9");
    assert!(
        hold_stream("127.0.0.9", port).await.is_none(),
        "a third from one IP is closed at once"
    );
    assert!(hits(&sidecar, "connections_per_ip").await >= 1.0);

    // Globally: fresh addresses (one connection each) are admitted until the cap. The
    // probes' connections may still be closing, which only makes the cap come sooner.
    let mut held = Vec::new();
    let mut refused = false;
    for n in 10..20 {
        match hold_stream(&format!("127.0.0.{n}"), port).await {
            Some(stream) => held.push(stream),
            None => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "max_connections = 4 was never reached");
    assert!(held.len() <= 2, "{} admitted beyond the two from .9", held.len());
    assert!(hits(&sidecar, "connections").await >= 1.0);

    // A closed connection frees its place.
    drop(first);
    let mut answered = None;
    for _ in 0..50 {
        answered = hold_stream("127.0.0.30", port).await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered.is_some());
}

#[tokio::test]
async fn topic_instances_are_capped() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", &topics("max_topic_instances = 5")).await;
    let port = sidecar.port;
    for n in 0..5 {
        let reply = get(port, &format!("/prices/S{n}"), &[]).await;
        assert_ne!(reply.status, 429);
    }
    let refused = get(port, "/prices/S5", &[]).await;
    assert_eq!(refused.status, 503);
    assert!(
        refused.text().contains("too many topic instances"),
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    // SSE: 200 + retry + end, never a status that stops EventSource.
    let mut sse = SseClient::connect(port, "/prices/S6", &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_block().await.expect("a retry hint").retry.is_some());
    assert!(sse.next_block().await.is_none());
    // Existing instances are still served.
    assert_ne!(get(port, "/prices/S0", &[]).await.status, 429);
    assert_eq!(sidecar.registry.len(), 5);
    assert!(hits(&sidecar, "topic_instances").await >= 2.0);
}

#[tokio::test]
async fn oversized_request_headers_get_431_and_publish_bodies_413() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", &topics("max_request_header_bytes = 4096")).await;
    let big = "a".repeat(5000);
    let reply = get(sidecar.port, "/prices/A", &[("X-Padding", &big)]).await;
    assert_eq!(reply.status, 431);
    assert!(reply.text().contains("4096"), "{}", reply.text());
    // Pass-through requests are held to the same limit.
    assert_eq!(
        get(sidecar.port, "/elsewhere", &[("X-Padding", &big)])
            .await
            .status,
        431
    );
    assert!(hits(&sidecar, "request_header_bytes").await >= 2.0);

    let body = "x".repeat((1 << 20) + 1);
    let reply = request(
        sidecar.admin_port,
        "POST",
        "/publish/chat",
        &[("Authorization", &format!("Bearer {PUBLISH_TOKEN}"))],
        &body,
    )
    .await;
    assert_eq!(reply.status, 413);
    assert!(hits(&sidecar, "publish_body_bytes").await >= 1.0);
}

#[tokio::test]
async fn held_long_polls_are_capped_per_ip() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/A", Behaviour::Json("{\"p\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", &topics("max_long_polls_per_ip = 2")).await;
    let port = sidecar.port;
    let mut etag = None;
    for _ in 0..100 {
        let reply = get(port, "/prices/A", &[]).await;
        if reply.status == 200 {
            etag = reply.header("etag").map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let etag = etag.expect("a first state");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let etag = etag.clone();
            tokio::spawn(async move { get(port, "/prices/A?wait=20", &[("If-None-Match", &etag)]).await })
        })
        .collect();
    common::eventually("two long polls held", || {
        sidecar
            .registry
            .topics()
            .iter()
            .map(|t| t.subscriber_count())
            .sum::<usize>()
            >= 2
    })
    .await;
    let third = get(port, "/prices/A?wait=20", &[("If-None-Match", &etag)]).await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(third.header("retry-after").is_some());
    assert!(hits(&sidecar, "long_polls_per_ip").await >= 1.0);
    for task in held {
        task.abort();
    }
}

#[tokio::test]
async fn websocket_frame_message_and_rate_limits_close_with_the_right_code() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", &topics("")).await;
    let port = sidecar.port;

    let mut ws = WsClient::connect(port, "/chat", None, &[]).await;
    assert_eq!(ws.status, 101);
    ws.send_frame(true, false, 0x1, &[b'a'; 600], true).await;
    assert_eq!(
        ws.read_until_close().await,
        Some(1009),
        "a frame over max_frame_bytes"
    );

    let mut ws = WsClient::connect(port, "/chat", None, &[]).await;
    ws.send_frame(false, false, 0x1, &[b'a'; 400], true).await;
    ws.send_frame(false, false, 0x0, &[b'a'; 400], true).await;
    ws.send_frame(true, false, 0x0, &[b'a'; 400], true).await;
    assert_eq!(
        ws.read_until_close().await,
        Some(1009),
        "a message over max_message_bytes"
    );
    assert!(hits(&sidecar, "websocket_message_bytes").await >= 2.0);

    let mut ws = WsClient::connect(port, "/chat", None, &[]).await;
    for n in 0..20 {
        ws.send_text(&format!("message {n}")).await;
    }
    assert_eq!(
        ws.read_until_close().await,
        Some(1008),
        "more than 5 messages a second"
    );
    assert!(hits(&sidecar, "websocket_inbound_rate").await >= 1.0);
    assert!(
        backend.hit_count("/echo/chat") <= 6,
        "the excess never reached the backend"
    );
}
