//! `/ready` on the real binary: not ready until every eager topic has its first upstream
//! result (or the grace time passed); `/live` from the start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;

#[tokio::test]
async fn ready_waits_for_the_first_upstream_result_of_eager_topics() {
    let backend = TestBackend::start().await;
    backend.set("/e-src", Behaviour::Status(500));
    let (port, admin_port) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("sidestream-ready-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             drain_timeout_ms = 500\nready_grace_ms = 60000\n\n\
             [upstream]\nbase_url = \"http://127.0.0.1:{}\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n\n\
             [[topic]]\nname = \"e\"\npath = \"/e\"\neager = true\n\
             source.poll = {{ url = \"/e-src\", interval_ms = 50 }}\n",
            backend.port
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidestream"))
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("admin listening", || {
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
    })
    .await;
    assert_eq!(get(admin_port, "/live", &[]).await.status, 200);
    // The eager topic polls at boot, with no client, and fails: not ready.
    eventually("polled at boot", || backend.hit_count("/e-src") >= 2).await;
    let waiting = get(admin_port, "/ready", &[]).await;
    assert_eq!(waiting.status, 503);
    assert!(
        waiting
            .text()
            .contains("waiting for the first upstream result of e"),
        "{}",
        waiting.text()
    );

    backend.set("/e-src", Behaviour::Json("{\"ok\":true}".into()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if get(admin_port, "/ready", &[]).await.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready after the first result"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And the state is there for the first client, without waiting.
    assert_eq!(get(port, "/e", &[]).await.text(), "{\"ok\":true}");

    // The binary's /metrics is valid Prometheus text and saw the boot-time polls.
    let metrics = get(admin_port, "/metrics", &[]).await.text();
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string()))).unwrap();
    let polls: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "sidestream_upstream_requests_total" && s.labels.get("topic") == Some("e"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(polls >= 2.0, "{polls} upstream requests counted");

    terminate(&mut child).await;
    let _ = std::fs::remove_file(config);
}
