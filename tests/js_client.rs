//! The JavaScript long-poll client (examples/long_poll_client.js) under Node, against a real
//! sidecar: it follows the cursor on state and event topics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use bytes::Bytes;
use common::*;
use sidestream::hub::{Payload, TopicKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 50, jitter_ms = 0 }

[[topic]]
name = "feed"
path = "/feed"
mode = "events"
source.poll = { url = "/feed-source", interval_ms = 1000 }
"#;

/// Runs the client under Node; it prints one JSON line per message and exits after `count`.
fn node_client(url: &str, count: usize) -> tokio::process::Child {
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/long_poll_client.js");
    let script = format!(
        "const {{ sidestreamLongPoll }} = require({client:?});
         let seen = 0;
         const poll = sidestreamLongPoll({url:?}, {{
           waitSeconds: 5,
           onMessage: (m) => {{ console.log(JSON.stringify(m)); if (++seen >= {count}) {{ poll.stop(); process.exit(0); }} }},
           onError: (e) => console.error(String(e)),
         }});
         setTimeout(() => process.exit(3), 20000);"
    );
    Command::new("node")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (apt-get install -y nodejs)")
}

type Output = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

fn output(child: &mut tokio::process::Child) -> Output {
    BufReader::new(child.stdout.take().unwrap()).lines()
}

async fn lines(reader: &mut Output, count: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < count {
        let line = tokio::time::timeout(WAIT, reader.next_line())
            .await
            .expect("node prints within the bound")
            .unwrap()
            .expect("node exited early");
        out.push(serde_json::from_str(&line).unwrap());
    }
    out
}

#[tokio::test]
async fn follows_a_state_topic() {
    let backend = TestBackend::start().await;
    backend.set("/prices/JS", Behaviour::Json("{\"p\":1}".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut child = node_client(&format!("http://127.0.0.1:{}/api/prices/JS", sidecar.port), 2);
    let mut reader = output(&mut child);
    let topic_key = TopicKey::new("prices", vec!["JS".into()]);
    eventually("client waiting on the first state", || {
        sidecar
            .registry
            .get(&topic_key)
            .is_some_and(|t| t.cursor().seq == 1)
    })
    .await;
    let first = lines(&mut reader, 1).await;
    assert_eq!(first[0]["data"], "{\"p\":1}");
    backend.set("/prices/JS", Behaviour::Json("{\"p\":2}".into()));
    let second = lines(&mut reader, 1).await;
    assert_eq!(second[0]["data"], "{\"p\":2}");
    assert!(second[0]["id"].as_str().unwrap().ends_with("-2"));
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn follows_an_event_topic_without_gaps() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    get(sidecar.port, "/feed?wait=0", &[]).await;
    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    eventually("poller's first message", || topic.cursor().seq == 1).await;
    let mut child = node_client(&format!("http://127.0.0.1:{}/feed", sidecar.port), 20);
    let mut reader = output(&mut child);
    eventually("client held", || topic.subscriber_count() == 1).await;
    for n in 1..=20 {
        topic.publish(Payload {
            data: Bytes::from(format!("{{\"n\":{n}}}")),
            ..Payload::default()
        });
    }
    let messages = lines(&mut reader, 20).await;
    let numbers: Vec<u64> = messages
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    assert!(child.wait().await.unwrap().success());
}

/// The browser WebSocket helper (examples/websocket_client.js) under Node's WebSocket:
/// messages arrive as envelopes and its cursor follows them.
#[tokio::test]
async fn the_websocket_helper_follows_an_event_topic_by_cursor() {
    // Node has a WebSocket client from 20.10 (behind this flag until 22); Debian 12's Node 18
    // has none, and then there is nothing to run the helper on.
    let supported = std::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "if (typeof WebSocket !== 'function') process.exit(1)",
        ])
        .status()
        .is_ok_and(|status| status.success());
    if !supported {
        eprintln!("SKIPPED: this Node has no WebSocket client (needs Node >= 20.10)");
        return;
    }
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let topics = format!("{TOPICS}websocket = {{ envelope = \"json\" }}\n");
    let sidecar = TestSidecar::start(backend.port, "", &topics).await;
    get(sidecar.port, "/feed?wait=0", &[]).await;
    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    eventually("poller's first message", || topic.cursor().seq == 1).await;
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/websocket_client.js");
    let script = format!(
        "const {{ sidestreamWebSocket }} = require({helper:?});
         let seen = 0;
         const ws = sidestreamWebSocket('/feed', {{
           base: 'http://127.0.0.1:{}/',
           onMessage: (m) => {{ console.log(JSON.stringify({{ id: m.id, data: m.data, cursor: ws.cursor }}));
                               if (++seen >= 3) {{ ws.close(); process.exit(0); }} }},
         }});
         setTimeout(() => process.exit(3), 20000);",
        sidecar.port
    );
    let mut child = Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "-e", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut reader = output(&mut child);
    eventually("helper connected", || topic.subscriber_count() == 1).await;
    for n in 1..=3 {
        topic.publish(Payload {
            data: Bytes::from(format!("{{\"n\":{n}}}")),
            ..Payload::default()
        });
    }
    let messages = lines(&mut reader, 3).await;
    for (index, message) in messages.iter().enumerate() {
        assert_eq!(message["data"]["n"], index as u64 + 1);
        assert_eq!(
            message["cursor"], message["id"],
            "the helper's cursor follows the ids"
        );
    }
    assert!(child.wait().await.unwrap().success());
}
