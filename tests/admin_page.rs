//! The admin page in a real browser: Debian's chromium, driven by playwright-core from
//! tests/browser (no browser download). Two topics with clients on each: the page shows
//! their subscriber counts, follows a client leaving, and shows a topic turning stale.
//!
//! Needs `apt-get install -y chromium` and `(cd tests/browser && npm ci)`; without them the
//! test fails and says so (`.ci/run` installs both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 100, jitter_ms = 0 }

[[topic]]
name = "weather"
path = "/api/weather/{city}"
source.poll = { url = "/weather/{city}", interval_ms = 100, jitter_ms = 0 }
"#;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"))
}

/// Fails (never skips) when the browser or the driver is missing, naming the fix.
fn require_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string());
    assert!(
        Path::new(&chromium).exists(),
        "chromium is missing at {chromium}: install it with `apt-get update && apt-get install -y chromium`"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `(cd tests/browser && npm ci)`"
    );
    assert!(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success()),
        "node is missing: install it with `apt-get install -y nodejs npm`"
    );
}

#[tokio::test]
async fn the_admin_page_shows_instances_counts_and_staleness() {
    require_browser();
    let backend = TestBackend::start().await;
    backend.set("/prices/AAPL", Behaviour::Counter);
    backend.set("/weather/paris", Behaviour::Json("{\"sky\":\"clear\"}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut clients = Vec::new();
    for path in [
        "/api/prices/AAPL",
        "/api/prices/AAPL",
        "/api/prices/AAPL",
        "/api/weather/paris",
        "/api/weather/paris",
    ] {
        let mut client = SseClient::connect(sidecar.port, path, &[]).await;
        client.next_event().await.unwrap();
        clients.push(client);
    }

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = Command::new("node")
        .current_dir(browser_dir())
        .arg("admin_page.mjs")
        .arg(format!("http://127.0.0.1:{}/", sidecar.admin_port))
        .arg(&screenshot)
        .args(["prices/AAPL=3", "weather/paris=2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut expect = async |step: &str| {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the page did not show `{step}` in time"))
            .unwrap();
        assert_eq!(
            line.as_deref(),
            Some(format!("ok {step}").as_str()),
            "step {step}"
        );
    };
    expect("counts").await;

    // One prices client goes.
    drop(clients.remove(0));
    stdin.write_all(b"prices/AAPL=2\n").await.unwrap();
    expect("disconnect").await;

    // The weather backend fails: its instance turns stale, prices stays ok.
    backend.set("/weather/paris", Behaviour::Status(500));
    stdin.write_all(b"weather/paris\n").await.unwrap();
    expect("stale").await;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait())
        .await
        .expect("node exits")
        .unwrap();
    assert!(status.success(), "the browser script failed: {status}");
    assert!(screenshot.exists(), "a screenshot at {}", screenshot.display());
    drop(clients);
}
