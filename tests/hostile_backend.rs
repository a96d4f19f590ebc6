//! A hostile or broken stream backend cannot make sidestream a memory sink: a 100 MiB line
//! without a line end, or an oversized line in 1-byte chunks, fails the stream (backoff,
//! last good data kept) with memory under 3 × `max_body_bytes` above the baseline, and the
//! topic recovers when the backend does. Runs the real binary, so its RSS is its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const HEALTHY: u8 = 0;
const HUGE_LINE: u8 = 1;
const ONE_BYTE_CHUNKS: u8 = 2;

fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// An event-stream backend whose behaviour `mode` picks per connection; counts the
/// connections it served in a hostile mode. A healthy stream ends after a moment, so the
/// sidecar keeps reconnecting and meets the next mode.
async fn hostile_backend(mode: Arc<AtomicU8>, hostile: Arc<AtomicUsize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mode = mode.load(Ordering::SeqCst);
            if mode != HEALTHY {
                hostile.fetch_add(1, Ordering::SeqCst);
            }
            tokio::spawn(async move {
                stream.set_nodelay(true).unwrap();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                match mode {
                    HUGE_LINE => {
                        let block = vec![b'x'; 64 * 1024];
                        let _ = stream.write_all(b"data: ").await;
                        for _ in 0..(100 * 1024 * 1024 / block.len()) {
                            if stream.write_all(&block).await.is_err() {
                                return;
                            }
                        }
                    }
                    ONE_BYTE_CHUNKS => {
                        // 1-byte writes (each its own segment), then larger ones past the
                        // limit: 4 Mi single-byte writes would only make the test slow.
                        let _ = stream.write_all(b"data: ").await;
                        for _ in 0..(64 * 1024) {
                            if stream.write_all(b"y").await.is_err() {
                                return;
                            }
                        }
                        let block = vec![b'y'; 64 * 1024];
                        for _ in 0..(2 * MAX_BODY_BYTES / block.len()) {
                            if stream.write_all(&block).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {
                        let _ = stream.write_all(b"data: {\"ok\":true}\n\n").await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_fail_the_stream_with_bounded_memory_and_the_topic_recovers() {
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let hostile_connections = Arc::new(AtomicUsize::new(0));
    let backend_port = hostile_backend(mode.clone(), hostile_connections.clone()).await;
    let (port, admin_port) = (free_port(), free_port());
    let (mut child, config) = spawn_sidestream(
        port,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\n\
         [upstream]\nbase_url = \"http://127.0.0.1:{backend_port}\"\nmax_body_bytes = {MAX_BODY_BYTES}\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 400\n\n\
         [[topic]]\nname = \"ticks\"\npath = \"/ticks\"\nsource.stream = {{ url = \"/ticks-source\" }}\n"
        ),
        "error",
    )
    .await;
    let mut client = SseClient::connect(port, "/ticks", &[]).await;
    assert_eq!(
        client.next_event().await.unwrap().data.as_deref(),
        Some("{\"ok\":true}")
    );
    let baseline = rss_bytes(child.id());

    for hostile in [HUGE_LINE, ONE_BYTE_CHUNKS] {
        let before = hostile_connections.load(Ordering::SeqCst);
        mode.store(hostile, Ordering::SeqCst);
        // Two hostile connections: the first one was given up (and another tried after the
        // backoff) instead of being buffered to its end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut peak = 0;
        let mut failed = false;
        while tokio::time::Instant::now() < deadline && !failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(rss_bytes(child.id()));
            failed = hostile_connections.load(Ordering::SeqCst) >= before + 2;
        }
        let grown = peak.saturating_sub(baseline);
        assert!(failed, "mode {hostile}: the stream was not given up and retried");
        assert!(
            grown < 3 * MAX_BODY_BYTES,
            "mode {hostile}: RSS grew by {} KiB; bound {} KiB",
            grown / 1024,
            3 * MAX_BODY_BYTES / 1024
        );
        mode.store(HEALTHY, Ordering::SeqCst);
    }
    // The backend is healthy again: the topic recovers after its backoff.
    // (It may first say it is stale, then fresh data comes.)
    let mut recovered = SseClient::connect(port, "/ticks", &[]).await;
    let mut fresh = false;
    for _ in 0..20 {
        let event = recovered.next_event().await.expect("the stream stays open");
        if event.data.as_deref() == Some("{\"ok\":true}") && event.event.is_none() {
            fresh = true;
            break;
        }
    }
    assert!(fresh, "fresh data once the backend is healthy again");
    drop(client);
    assert_eq!(terminate(&mut child).await.code(), Some(0));
    let _ = std::fs::remove_file(config);
}
