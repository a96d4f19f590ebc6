//! SIGTERM on the real binary: `/ready` turns 503, SSE streams end spread over the drain
//! window with a `retry:` hint, WebSockets close with 1001, and the process exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::ws::WsClient;
use common::*;
use tokio::time::Instant;

/// A sidecar with a 4 s drain window and one poll topic `/prices/{symbol}`.
fn drain_config(port: u16, admin_port: u16, backend_port: u16, interval_ms: u64) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         drain_timeout_ms = 4000\n\n[upstream]\nbase_url = \"http://127.0.0.1:{backend_port}\"\n\n\
         [[topic]]\nname = \"prices\"\npath = \"/prices/{{symbol}}\"\n\
         source.poll = {{ url = \"/prices/{{symbol}}\", interval_ms = {interval_ms} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_spread_over_the_window_and_exits_zero() {
    let backend = TestBackend::start().await;
    backend.set("/prices/D", Behaviour::Json("{\"p\":1}".into()));
    let (port, admin_port) = (free_port(), free_port());
    let (mut child, config) =
        spawn_sidestream(port, &drain_config(port, admin_port, backend.port, 200), "warn").await;
    eventually("admin listening", || {
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
    })
    .await;
    assert_eq!(get(admin_port, "/ready", &[]).await.status, 200);

    let mut sse = Vec::new();
    for _ in 0..300 {
        let mut client = SseClient::connect(port, "/prices/D", &[]).await;
        client.next_event().await.unwrap();
        sse.push(client);
    }
    let mut ws = Vec::new();
    for _ in 0..50 {
        let mut client = WsClient::connect(port, "/prices/D", None, &[]).await;
        client.read_message().await;
        ws.push(client);
    }

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The signal is handled asynchronously: /ready turns 503 within a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(admin_port, "/ready", &[]).await.status != 503 {
        assert!(Instant::now() < deadline, "not ready once draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let sse_closes: Vec<_> = sse
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut saw_retry = false;
                while let Some(block) = client.next_block().await {
                    saw_retry |= block.retry.is_some();
                }
                (started.elapsed(), saw_retry)
            })
        })
        .collect();
    let ws_closes: Vec<_> = ws
        .into_iter()
        .map(|mut client| tokio::spawn(async move { (started.elapsed(), client.read_until_close().await) }))
        .collect();
    let mut sse_times = Vec::new();
    for close in sse_closes {
        let (at, saw_retry) = close.await.unwrap();
        assert!(saw_retry, "each SSE stream ends with a retry hint");
        sse_times.push(at);
    }
    for close in ws_closes {
        let (at, code) = close.await.unwrap();
        assert_eq!(code, Some(1001));
        assert!(at < Duration::from_secs(5));
    }
    sse_times.sort();
    let last = *sse_times.last().unwrap();
    assert!(
        last < Duration::from_secs(5),
        "all closed within the drain window: {last:?}"
    );
    let after_first_second = sse_times.iter().filter(|t| **t > Duration::from_secs(1)).count();
    assert!(
        after_first_second > 50,
        "closes spread over the window, {after_first_second} after 1 s"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "exits within the bound");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    let _ = std::fs::remove_file(config);
}

/// The upstreams run until the drain is over: a stream waiting for its turn to end still
/// receives every update, instead of the data frozen at the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_keep_receiving_updates_during_the_drain() {
    let backend = TestBackend::start().await;
    backend.set("/prices/F", Behaviour::Json("{\"p\":0}".into()));
    let (port, admin_port) = (free_port(), free_port());
    let (mut child, config) =
        spawn_sidestream(port, &drain_config(port, admin_port, backend.port, 100), "warn").await;

    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = SseClient::connect(port, "/prices/F", &[]).await;
        client.next_event().await.unwrap();
        clients.push(client);
    }
    // The backend's value changes every 100 ms, through the drain.
    let updates = tokio::spawn({
        let backend = backend.clone();
        async move {
            for p in 1..200u32 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                backend.set("/prices/F", Behaviour::Json(format!("{{\"p\":{p}}}")));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());

    let reads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                // Events that arrive from 300 ms after the signal: later than any update
                // that was already under way when it came.
                let mut fresh = 0;
                while let Some(block) = client.next_block().await {
                    if block.data.is_some() && started.elapsed() > Duration::from_millis(300) {
                        fresh += 1;
                    }
                }
                (started.elapsed(), fresh)
            })
        })
        .collect();
    let mut late_closers = 0;
    for read in reads {
        let (closed_at, fresh) = read.await.unwrap();
        if closed_at > Duration::from_millis(1000) {
            late_closers += 1;
            assert!(
                fresh > 0,
                "a stream open {closed_at:?} into the drain got no update after the signal"
            );
        }
    }
    assert!(late_closers > 0, "some streams stay open well into the drain");
    updates.abort();
    assert_eq!(terminate(&mut child).await.code(), Some(0));
    let _ = std::fs::remove_file(config);
}
