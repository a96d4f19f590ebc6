//! The stream and push sources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use sidestream::hub::TopicKey;

const TOPICS: &str = r#"
[[topic]]
name = "ticks"
path = "/ticks"
source.stream = { url = "/ticks-source" }
queue_max_messages = 1000
history_max_messages = 1000

[[topic]]
name = "alerts"
path = "/alerts/{team}"
source.push = {}
queue_max_messages = 20000
history_max_messages = 20000

[[topic]]
name = "prices"
path = "/prices/{symbol}"
source.poll = { url = "/prices/{symbol}" }
"#;

#[tokio::test]
async fn a_dropped_upstream_stream_resumes_with_last_event_id_and_loses_nothing() {
    let backend = TestBackend::start().await;
    backend.set(
        "/ticks-source",
        Behaviour::EventStream {
            total: 500,
            drops: vec![150, 320],
        },
    );
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    // The first client opens the instance (and the upstream stream); the others join from
    // the start of its history, wherever the stream is by then.
    let mut clients = vec![SseClient::connect(sidecar.port, "/ticks", &[]).await];
    let topic = sidecar.registry.get(&TopicKey::new("ticks", vec![])).unwrap();
    let start = format!("{}-0", topic.cursor().epoch);
    for _ in 0..2 {
        clients.push(SseClient::connect(sidecar.port, "/ticks", &[("Last-Event-ID", start.as_str())]).await);
    }
    for client in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < 500 {
            let event = client.next_event().await.expect("stream open");
            if event.event.as_deref() == Some("stale") {
                continue;
            }
            let data: serde_json::Value = serde_json::from_str(&event.data.unwrap()).unwrap();
            seen.push(data["n"].as_u64().unwrap());
        }
        assert_eq!(seen, (1..=500).collect::<Vec<_>>(), "all 500, once, in order");
    }
    let resumes: Vec<Option<String>> = backend
        .hits("/ticks-source")
        .iter()
        .take(3)
        .map(|h| {
            h.headers
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(resumes, [None, Some("150".into()), Some("320".into())]);
}

async fn publish(port: u16, path: &str, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(auth) = auth.as_deref() {
        all.push(("Authorization", auth));
    }
    request(port, "POST", path, &all, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pushed_messages_reach_a_hundred_subscribers_in_order() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(SseClient::connect(sidecar.port, "/alerts/ops", &[]).await);
    }
    let topic = TopicKey::new("alerts", vec!["ops".into()]);
    eventually("100 subscribers", || {
        sidecar
            .registry
            .get(&topic)
            .is_some_and(|t| t.subscriber_count() == 100)
    })
    .await;
    // 100 single POSTs, then 99 batches of 100.
    for n in 0..100 {
        let reply = publish(
            sidecar.admin_port,
            "/publish/alerts/ops",
            Some(PUBLISH_TOKEN),
            &[],
            &n.to_string(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    for batch in 1..100 {
        let items: Vec<String> = (batch * 100..batch * 100 + 100)
            .map(|n| format!("{{\"data\":{n}}}"))
            .collect();
        let body = format!("[{}]", items.join(","));
        let reply = publish(
            sidecar.admin_port,
            "/publish/alerts/ops?batch=1",
            Some(PUBLISH_TOKEN),
            &[],
            &body,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["cursors"].as_array().unwrap().len(), 100);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut expected = 0u64;
                while expected < 10_000 {
                    let event = client.next_event().await.expect("open");
                    assert_eq!(event.data.unwrap().parse::<u64>().unwrap(), expected);
                    expected += 1;
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
}

#[tokio::test]
async fn publishing_needs_the_token_and_idempotency_keys_deliver_once() {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    let missing = publish(sidecar.admin_port, "/publish/alerts/dev", None, &[], "x").await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = publish(
        sidecar.admin_port,
        "/publish/alerts/dev",
        Some("not-the-token-at-all"),
        &[],
        "x",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let not_push = publish(
        sidecar.admin_port,
        "/publish/prices/A",
        Some(PUBLISH_TOKEN),
        &[],
        "x",
    )
    .await;
    assert_eq!(not_push.status, 409);
    let unknown = publish(
        sidecar.admin_port,
        "/publish/nowhere",
        Some(PUBLISH_TOKEN),
        &[],
        "x",
    )
    .await;
    assert_eq!(unknown.status, 404);

    // History is recorded with no subscriber, so a client with a cursor can replay later.
    let first = publish(
        sidecar.admin_port,
        "/publish/alerts/dev",
        Some(PUBLISH_TOKEN),
        &[("Idempotency-Key", "k-1")],
        "{\"a\":1}",
    )
    .await;
    let first: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let again = publish(
        sidecar.admin_port,
        "/publish/alerts/dev",
        Some(PUBLISH_TOKEN),
        &[("Idempotency-Key", "k-1")],
        "{\"a\":1}",
    )
    .await;
    let again: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(again["duplicates"], 1);
    assert_eq!(again["cursor"], first["cursor"]);
    publish(
        sidecar.admin_port,
        "/publish/alerts/dev?event=page",
        Some(PUBLISH_TOKEN),
        &[("Idempotency-Key", "k-2")],
        "{\"a\":2}",
    )
    .await;

    let cursor = first["cursor"].as_str().unwrap();
    let zero = format!("{}-0", cursor.split('-').next().unwrap());
    let mut client =
        SseClient::connect(sidecar.port, "/alerts/dev", &[("Last-Event-ID", zero.as_str())]).await;
    let one = client.next_event().await.unwrap();
    assert_eq!(one.data.as_deref(), Some("{\"a\":1}"));
    let two = client.next_event().await.unwrap();
    assert_eq!(
        (two.event.as_deref(), two.data.as_deref()),
        (Some("page"), Some("{\"a\":2}"))
    );
    // Nothing else (the duplicate was not delivered): the next block is a keepalive or times out.
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next_event()).await;
    assert!(extra.is_err(), "no duplicate delivery");
}
