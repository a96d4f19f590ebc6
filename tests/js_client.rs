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

/// A TCP relay in front of `port` that counts the bytes the server sends back: what a client
/// behind it received on the wire.
async fn counting_relay(port: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (relay_port, received)
}

/// About 50 KB of JSON: 500 rows.
fn dashboard() -> serde_json::Value {
    let rows: Vec<serde_json::Value> = (0..500)
        .map(|n| serde_json::json!({"id": n, "name": format!("row number {n}"), "value": 0, "status": "ok", "note": "n".repeat(40)}))
        .collect();
    serde_json::json!({"title": "dashboard", "rows": rows})
}

/// The SSE helper (examples/sse_client.js) under Node with `?delta=json-patch`, against a
/// backend whose 50 KB document changes one field at a time: after 30 updates its document
/// is the backend's, and it received less than 5 % of the bytes a full-state client did
/// (both measured on the wire by relays).
#[tokio::test]
async fn the_sse_helper_keeps_the_document_from_patches_for_a_fraction_of_the_bytes() {
    const DELTA_TOPICS: &str = r#"
[[topic]]
name = "dashboard"
path = "/dashboard"
source.poll = { url = "/dashboard-source", interval_ms = 20, jitter_ms = 0 }
deltas = true
"#;
    let backend = TestBackend::start().await;
    let mut document = dashboard();
    assert!(document.to_string().len() > 45_000, "a 50 KB document");
    backend.set("/dashboard-source", Behaviour::Json(document.to_string()));
    let sidecar = TestSidecar::start(backend.port, "", DELTA_TOPICS).await;
    let (delta_port, delta_bytes) = counting_relay(sidecar.port).await;
    let (full_port, full_bytes) = counting_relay(sidecar.port).await;

    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sse_client.js");
    let script = format!(
        "const {{ sidestreamState }} = require({helper:?});
         const state = sidestreamState('http://127.0.0.1:{delta_port}/dashboard', {{
           onState: (doc, info) => console.log(JSON.stringify({{ id: info.id, kind: info.kind, doc: state.document }})),
           onError: (e) => console.error(String(e)),
         }});
         setTimeout(() => process.exit(3), 30000);"
    );
    let mut child = Command::new("node")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut reader = output(&mut child);
    let mut full_client = SseClient::connect(full_port, "/dashboard", &[]).await;
    let key = TopicKey::new("dashboard", vec![]);
    eventually("both clients subscribed to the first state", || {
        sidecar
            .registry
            .get(&key)
            .is_some_and(|t| t.subscriber_count() == 2 && t.cursor().seq == 1)
    })
    .await;
    let topic = sidecar.registry.get(&key).unwrap();
    const UPDATES: u64 = 30;
    for n in 1..=UPDATES {
        let row = (n as usize * 37) % 500;
        document["rows"][row]["value"] = serde_json::json!(n);
        backend.set("/dashboard-source", Behaviour::Json(document.to_string()));
        eventually("the change is published", || topic.cursor().seq == n + 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let last = topic.cursor().to_string();

    let mut full_states = 0u64;
    loop {
        let event = full_client.next_event().await.expect("the full stream goes on");
        full_states += 1;
        if event.id.as_deref() == Some(last.as_str()) {
            let state: serde_json::Value = serde_json::from_str(&event.data.unwrap()).unwrap();
            assert_eq!(state, document);
            break;
        }
    }
    assert_eq!(full_states, UPDATES + 1);
    let mut patches = 0u64;
    let helper_document = loop {
        let line = lines(&mut reader, 1).await.remove(0);
        if line["kind"] == "patch" {
            patches += 1;
        }
        if line["id"] == last.as_str() {
            break line["doc"].clone();
        }
    };
    assert_eq!(patches, UPDATES, "every update came as a patch");
    assert_eq!(
        helper_document, document,
        "the helper's document is the backend's"
    );
    let (delta, full) = (
        delta_bytes.load(std::sync::atomic::Ordering::Relaxed),
        full_bytes.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("on the wire: delta client {delta} bytes, full-state client {full} bytes");
    assert!(
        delta * 20 < full,
        "the delta client received {delta} bytes, the full-state client {full}"
    );
}

/// The long-poll and WebSocket helpers with `deltas: true`: each keeps the document from the
/// patches it receives (and says so in `document`), ending equal to the latest state.
#[tokio::test]
async fn the_long_poll_and_websocket_helpers_apply_patches() {
    let websocket = std::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "if (typeof WebSocket !== 'function') process.exit(1)",
        ])
        .status()
        .is_ok_and(|status| status.success());
    const DOC_TOPIC: &str = r#"
[[topic]]
name = "doc"
path = "/doc"
source.push = {}
mode = "state"
deltas = true
websocket = { envelope = "json" }
"#;
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", DOC_TOPIC).await;
    let bearer = format!("Bearer {PUBLISH_TOKEN}");
    let publish = |document: serde_json::Value| {
        let bearer = bearer.clone();
        let admin = sidecar.admin_port;
        async move {
            let reply = request(
                admin,
                "POST",
                "/publish/doc",
                &[("Authorization", &bearer), ("Content-Type", "application/json")],
                &document.to_string(),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            answer["cursor"].as_str().unwrap().to_string()
        }
    };
    let mut document = serde_json::json!({"rows": (0..100).map(|n| serde_json::json!({"n": n, "v": 0})).collect::<Vec<_>>()});
    publish(document.clone()).await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let port = sidecar.port;
    let script = format!(
        "const {{ sidestreamLongPoll }} = require('{examples}/long_poll_client.js');
         const {{ sidestreamWebSocket }} = require('{examples}/websocket_client.js');
         const print = (via, id, doc) => console.log(JSON.stringify({{ via, id, doc }}));
         const poll = sidestreamLongPoll('http://127.0.0.1:{port}/doc', {{
           deltas: true, waitSeconds: 5,
           onMessage: (m) => print('long_poll', m.id, poll.document),
         }});
         if ({websocket}) {{
           const ws = sidestreamWebSocket('/doc', {{
             base: 'http://127.0.0.1:{port}/', deltas: true,
             onMessage: (m) => print('websocket', m.id, ws.document),
           }});
         }}
         setTimeout(() => process.exit(3), 20000);"
    );
    let mut args = vec!["--no-warnings", "-e", &script];
    if websocket {
        args.insert(0, "--experimental-websocket");
    }
    let mut child = Command::new("node")
        .args(&args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut reader = output(&mut child);
    let topic = sidecar.registry.get(&TopicKey::new("doc", vec![])).unwrap();
    let clients = if websocket { 2 } else { 1 };
    eventually("the helpers are subscribed", || {
        topic.subscriber_count() == clients
    })
    .await;
    let mut last = String::new();
    for n in 0..10 {
        document["rows"][n * 7]["v"] = serde_json::json!(n + 1);
        last = publish(document.clone()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut done = std::collections::BTreeSet::new();
    while done.len() < clients {
        let line = lines(&mut reader, 1).await.remove(0);
        if line["id"] == last.as_str() {
            assert_eq!(line["doc"], document, "{}", line["via"]);
            done.insert(line["via"].as_str().unwrap().to_string());
        }
    }
    let patched = metric(
        sidecar.admin_port,
        "sidestream_delta_patch_bytes_total",
        &[("topic", "doc")],
    )
    .await;
    assert!(patched > 0.0, "the helpers were sent patches");
    if !websocket {
        eprintln!("SKIPPED the WebSocket half: this Node has no WebSocket client");
    }
}
