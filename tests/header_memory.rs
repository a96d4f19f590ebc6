//! `max_request_header_bytes` bounds memory, not only what is accepted: on the real binary,
//! 2 000 connections each sending four times the limit of an unfinished header (then one
//! byte a second) must not grow the process by more than 2 × 2 000 × the limit. And a
//! connection waiting for its next request waits in a small buffer, not in a pingora session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 2_000;
const LIMIT: usize = 8 * 1024;

fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The sidecar binary on a config with one polled topic and these `[limits]`.
async fn start_binary(
    backend_port: u16,
    limits: &str,
) -> (std::process::Child, std::path::PathBuf, u16, u16) {
    let (port, admin_port) = (free_port(), free_port());
    let (child, config) = spawn_sidestream(
        port,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\n\
         [upstream]\nbase_url = \"http://127.0.0.1:{backend_port}\"\n\n\
         [limits]\nmax_connections = 5000\nmax_connections_per_ip = 5000\n{limits}\n\n\
         [[topic]]\nname = \"prices\"\npath = \"/prices/{{symbol}}\"\n\
         source.poll = {{ url = \"/prices/{{symbol}}\", interval_ms = 1000 }}\n"
        ),
        "error",
    )
    .await;
    // Warm up the worker threads and their allocator arenas before any baseline.
    for _ in 0..20 {
        get(port, "/not-a-topic", &[]).await;
    }
    (child, config, port, admin_port)
}

/// Idle keep-alive connections after a pass-through request: each waits for its next request
/// in sidestream's 1 KiB head buffer (`request_head`): ~7.8 KiB each in all (task, streams,
/// deadline) where a pingora session waiting for it (its request buffer, session and proxy
/// state machine) made it ~22 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_wait_in_a_small_buffer() {
    let backend = TestBackend::start().await;
    backend.set("/hello", Behaviour::Plain("text/plain", "hi".into()));
    let (mut child, config, port, _) = start_binary(backend.port, "").await;
    let baseline = rss_bytes(child.id());
    let mut idle = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, _, body) = common::raw::read_response(&mut stream).await;
        assert_eq!((status, body.as_str()), (200, "hi"));
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = rss_bytes(child.id()).saturating_sub(baseline) / CONNECTIONS;
    assert!(
        per_connection < 12 * 1024,
        "an idle keep-alive connection holds {per_connection} B (bound 12 KiB)"
    );
    // Still alive and served: the next request on each works.
    for stream in idle.iter_mut().take(10) {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, _, _) = common::raw::read_response(stream).await;
        assert_eq!(status, 200);
    }
    drop(idle);
    assert_eq!(terminate(&mut child).await.code(), Some(0));
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_oversized_headers_do_not_hold_memory() {
    let backend = TestBackend::start().await;
    let (mut child, config, port, admin_port) =
        start_binary(backend.port, &format!("max_request_header_bytes = {LIMIT}")).await;
    let baseline = rss_bytes(child.id());

    // Few, long header lines (pingora refuses many short ones on its own), unfinished.
    let mut header = b"GET /prices/A HTTP/1.1\r\nHost: x\r\n".to_vec();
    for _ in 0..4 {
        header.extend_from_slice(b"X-Padding: ");
        header.resize(header.len() + LIMIT, b'a');
        header.extend_from_slice(b"\r\n");
    }
    let header = std::sync::Arc::new(header);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let header = header.clone();
        clients.push(tokio::spawn(async move {
            let mut stream = stream;
            // Errors are expected: the sidecar may cut the connection mid-write.
            let _ = stream.write_all(&header).await;
            let mut answer = Vec::new();
            for _ in 0..5 {
                if stream.write_all(b"a").await.is_err() {
                    break;
                }
                let mut buf = [0u8; 512];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            answer
        }));
    }
    // Give the sidecar time to read what it will read of every header.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_bytes(child.id()).saturating_sub(baseline);
    let bound = 2 * CONNECTIONS * LIMIT;
    let mut refused = 0;
    for client in clients {
        let answer = client.await.unwrap();
        if answer.starts_with(b"HTTP/1.1 431") {
            refused += 1;
        }
    }
    assert!(
        grown < bound,
        "RSS grew by {} KiB with {CONNECTIONS} slow oversized headers; bound {} KiB",
        grown / 1024,
        bound / 1024
    );
    assert!(refused > 0, "clients are told why (431) where they still read");
    assert!(
        metric(
            admin_port,
            "sidestream_limit_hits_total",
            &[("limit", "request_header_bytes")]
        )
        .await
            >= 1.0
    );
    assert_eq!(terminate(&mut child).await.code(), Some(0));
    let _ = std::fs::remove_file(config);
}
