//! What attackers and broken clients send, all at once, while a well-behaved client streams:
//! slow headers, invalid HTTP, bad WebSocket frames, a deflate bomb and a burst of 10 000
//! distinct topic instances. Each gets a clean rejection, nothing panics, and the
//! well-behaved client receives every message in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::ws::{encode_client_frame, WsClient};
use common::{get, request, Behaviour, SseClient, TestBackend, TestSidecar, PUBLISH_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const TEXT: u8 = 0x1;
const PING: u8 = 0x9;

const TOPICS: &str = r#"
[[topic]]
name = "feed"
path = "/feed"
source.push = {}
history_max_messages = 10000
queue_max_messages = 10000

[[topic]]
name = "chat"
path = "/chat"
source.push = {}
websocket = { max_message_bytes = 1024, deflate_min_bytes = 0 }

[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/backend/prices/{symbol}", interval_ms = 1000 }
idle_linger_ms = 60000

[limits]
max_topic_instances = 100
request_header_timeout_ms = 500
"#;

async fn publish(admin_port: u16, n: usize) {
    let reply = request(
        admin_port,
        "POST",
        "/publish/feed",
        &[("Authorization", &format!("Bearer {PUBLISH_TOKEN}"))],
        &format!("{n}"),
    )
    .await;
    assert_eq!(reply.status.as_u16() / 100, 2, "{}", reply.text());
}

/// Sends `bytes` on a fresh connection and returns whatever comes back before the server
/// closes (or the bound runs out: then what was read so far).
async fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A permessage-deflate payload that inflates to `size` bytes of `a`.
fn deflate_bomb(size: usize) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b'a'; 64 * 1024];
    for _ in 0..size / block.len() {
        encoder.write_all(&block).unwrap();
    }
    encoder.flush().unwrap();
    let mut compressed = encoder.finish().unwrap();
    if compressed.ends_with(&[0x00, 0x00, 0xFF, 0xFF]) {
        compressed.truncate(compressed.len() - 4);
    }
    compressed
}

async fn websocket_attacks(port: u16) {
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked",
            encode_client_frame(true, false, TEXT, b"hi", false),
            1002,
        ),
        (
            "oversized",
            encode_client_frame(true, false, TEXT, &[b'x'; 4096], true),
            1009,
        ),
        (
            "reserved opcode",
            encode_client_frame(true, false, 0x3, b"?", true),
            1002,
        ),
        (
            "control frame over 125 bytes",
            encode_client_frame(true, false, PING, &[b'p'; 200], true),
            1002,
        ),
        (
            "reserved bit without deflate",
            encode_client_frame(true, true, TEXT, b"hi", true),
            1002,
        ),
    ];
    for (name, bytes, expected) in cases {
        let mut client = WsClient::connect(port, "/chat", None, &[]).await;
        assert_eq!(client.status, 101, "{name}");
        client.send_raw(&bytes).await;
        assert_eq!(client.read_until_close().await, Some(expected), "{name}");
    }

    let mut client = WsClient::connect(port, "/chat", Some("permessage-deflate"), &[]).await;
    assert_eq!(client.status, 101);
    assert!(
        client.header("sec-websocket-extensions").is_some(),
        "deflate negotiated"
    );
    let bomb = deflate_bomb(16 << 20);
    assert!(bomb.len() < 64 * 1024, "a real bomb: {} bytes in", bomb.len());
    client
        .send_raw(&encode_client_frame(true, true, TEXT, &bomb, true))
        .await;
    assert_eq!(
        client.read_until_close().await,
        Some(1009),
        "the deflate bomb stops at max_message_bytes"
    );
}

async fn http_attacks(port: u16) {
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET /feed HTTP/9.9\r\n\r\n",
        b"GET /feed HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /feed HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
        b"GET /prices/%ZZ%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(port, garbage).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(garbage)
        );
    }
}

/// Connections that send their headers one byte at a time (slowloris). Each reports
/// whether the server closed it before it was done dripping (120 bytes over 3.6 s).
async fn slow_headers(port: u16) -> Vec<tokio::task::JoinHandle<bool>> {
    (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                for byte in b"GET /feed HTTP/1.1\r\nHost: slow\r\nX-Slow: "
                    .iter()
                    .cycle()
                    .take(120)
                {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                false
            })
        })
        .collect()
}

async fn instance_burst(port: u16) -> Vec<u16> {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for n in 0..1250 {
                    let reply = get(port, &format!("/prices/S{task}-{n}"), &[]).await;
                    statuses.push(reply.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_is_rejected_cleanly_while_a_good_client_keeps_its_stream() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/none", Behaviour::Status(404));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let port = sidecar.port;
    let admin_port = sidecar.admin_port;

    let mut good = SseClient::connect(port, "/feed", &[]).await;
    assert_eq!(good.status, 200);
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = tokio::spawn({
        let running = running.clone();
        async move {
            let mut n = 0;
            while running.load(std::sync::atomic::Ordering::SeqCst) && n < 5_000 {
                n += 1;
                publish(admin_port, n).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }
    });

    let slow = slow_headers(port).await;
    http_attacks(port).await;
    websocket_attacks(port).await;
    let statuses = instance_burst(port).await;
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let published = tokio::time::timeout(WAIT, publisher).await.unwrap().unwrap();
    for task in slow {
        let closed = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(
            closed,
            "a slow-header connection was closed at the header deadline"
        );
    }
    let timed_out = common::metric(
        admin_port,
        "sidestream_limit_hits_total",
        &[("limit", "request_header_timeout")],
    )
    .await;
    assert!(timed_out >= 20.0, "{timed_out}");

    assert_eq!(statuses.len(), 10_000);
    assert!(
        statuses.iter().all(|s| *s == 503),
        "only 503s: the cap or no data yet"
    );
    let live = sidecar.registry.len();
    // The cap may be passed by racing creators, at most one per worker thread.
    assert!((100..=104).contains(&live), "{live} instances (cap 100)");
    let polled: std::collections::HashSet<String> = backend
        .all_seen()
        .into_iter()
        .filter(|seen| seen.path.starts_with("/backend/prices/"))
        .map(|seen| seen.path)
        .collect();
    assert!(
        polled.len() <= 104,
        "{} distinct backend paths polled",
        polled.len()
    );

    // The well-behaved client got every message, in order, with no gap.
    let mut expected = 1;
    while expected <= published {
        let event = tokio::time::timeout(WAIT, good.next_event())
            .await
            .expect("the good client keeps receiving")
            .expect("its stream stays open");
        let Some(data) = event.data else { continue };
        assert_eq!(data.parse::<usize>().unwrap(), expected, "in order, nothing lost");
        expected += 1;
    }
    assert!(
        published > 10,
        "the publisher ran throughout ({published} messages)"
    );
    assert_eq!(get(admin_port, "/live", &[]).await.status, 200);
}
