//! Long polling and short polling on the shared cursor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{header, read_response};
use common::*;
use serde_json::Value;
use sidestream::hub::{Payload, TopicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TOPICS: &str = r#"
[[topic]]
name = "prices"
path = "/api/prices/{symbol}"
source.poll = { url = "/prices/{symbol}", interval_ms = 200, jitter_ms = 0 }

[[topic]]
name = "feed"
path = "/feed"
mode = "events"
history_max_messages = 4000
queue_max_messages = 64
source.poll = { url = "/feed-source", interval_ms = 1000, jitter_ms = 0 }

[[topic]]
name = "sse-only"
path = "/only-sse"
transports = ["sse"]
source.poll = { url = "/only-sse-source" }
"#;

fn key(name: &str, params: &[&str]) -> TopicKey {
    TopicKey::new(name, params.iter().map(|p| p.to_string()).collect())
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

async fn setup() -> (std::sync::Arc<TestBackend>, TestSidecar) {
    let backend = TestBackend::start().await;
    backend.set("/prices/A", Behaviour::Json("{\"p\":1}".into()));
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let sidecar = TestSidecar::start(backend.port, "long_poll_max_wait_ms = 10000", TOPICS).await;
    (backend, sidecar)
}

#[tokio::test]
async fn long_poll_loop_receives_a_fast_burst_exactly_once_in_order() {
    let (_backend, sidecar) = setup().await;
    // The first poll creates the instance; its 304 (or the poller's first message) gives
    // the starting cursor.
    let first = get(sidecar.port, "/feed?wait=1", &[]).await;
    let mut cursor = unquote(first.header("etag").unwrap());
    let topic = sidecar.registry.get(&key("feed", &[])).unwrap();

    let publisher = tokio::spawn(async move {
        for n in 1..=1000u64 {
            topic.publish(Payload {
                data: Bytes::from(n.to_string()),
                ..Payload::default()
            });
            if n % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });

    let mut received: Vec<u64> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    let deadline = Instant::now() + WAIT * 3;
    while received.last() != Some(&1000) {
        assert!(Instant::now() < deadline, "got {} events", received.len());
        let reply = get(sidecar.port, &format!("/feed?wait=5&cursor={cursor}"), &[]).await;
        if reply.status == 304 {
            continue;
        }
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-sidestream-mode"), Some("events"));
        let batch: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(batch["reset"], false, "history covers every gap");
        for message in batch["messages"].as_array().unwrap() {
            let data = message["data"].as_u64().unwrap();
            if data == 0 {
                continue; // the poller's own first message
            }
            received.push(data);
            let id = message["id"].as_str().unwrap();
            ids.push(id.rsplit('-').next().unwrap().parse().unwrap());
        }
        cursor = batch["cursor"].as_str().unwrap().to_string();
        assert_eq!(unquote(reply.header("etag").unwrap()), cursor);
    }
    publisher.await.unwrap();
    assert_eq!(
        received,
        (1..=1000).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "cursor grows by one");
}

#[tokio::test]
async fn a_thousand_held_long_polls_are_released_by_one_message() {
    let (backend, sidecar) = setup().await;
    let first = get(sidecar.port, "/api/prices/A", &[]).await;
    let first = if first.status == 503 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        get(sidecar.port, "/api/prices/A", &[]).await
    } else {
        first
    };
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_string();
    let topic = sidecar.registry.get(&key("prices", &["A"])).unwrap();
    let polls_before = backend.hit_count("/prices/A");
    let started = Instant::now();

    let mut held = Vec::new();
    for _ in 0..1000 {
        let etag = etag.clone();
        let port = sidecar.port;
        held.push(tokio::spawn(async move {
            get(port, "/api/prices/A?wait=30", &[("If-None-Match", etag.as_str())]).await
        }));
    }
    eventually("1000 held requests", || topic.subscriber_count() == 1000).await;
    backend.set("/prices/A", Behaviour::Json("{\"p\":2}".into()));
    let mut new_etags = std::collections::HashSet::new();
    for request in held {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "{\"p\":2}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        new_etags.insert(reply.header("etag").unwrap().to_string());
    }
    assert_eq!(new_etags.len(), 1, "everyone got the same message");
    assert!(!new_etags.contains(&etag));
    let elapsed = started.elapsed();
    let polls = backend.hit_count("/prices/A") - polls_before;
    let intervals = (elapsed.as_millis() / 200) as usize;
    assert!(
        polls <= intervals + 2,
        "{polls} backend requests in {elapsed:?} (one per 200 ms interval expected)"
    );
    eventually("all released", || topic.subscriber_count() == 0).await;
}

#[tokio::test]
async fn short_poll_is_served_from_the_hub_with_etags() {
    let (backend, sidecar) = setup().await;
    let mut reply = get(sidecar.port, "/api/prices/A", &[]).await;
    let deadline = Instant::now() + WAIT;
    while reply.status == 503 {
        assert!(reply.header("retry-after").is_some(), "503 says when to retry");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = get(sidecar.port, "/api/prices/A", &[]).await;
    }
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "{\"p\":1}", "exactly what the backend returned");
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    let etag = reply.header("etag").unwrap().to_string();

    let polls_before = backend.hit_count("/prices/A");
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let port = sidecar.port;
        clients.push(tokio::spawn(async move {
            get(port, "/api/prices/A", &[]).await.status
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), 200);
    }
    let polls = backend.hit_count("/prices/A") - polls_before;
    let intervals = (started.elapsed().as_millis() / 200) as usize;
    assert!(
        polls <= intervals + 1,
        "100 short polls caused {polls} backend requests"
    );

    let unchanged = get(sidecar.port, "/api/prices/A", &[("If-None-Match", etag.as_str())]).await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));

    let head = request(sidecar.port, "HEAD", "/api/prices/A", &[], "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    backend.set("/prices/A", Behaviour::Json("{\"p\":3}".into()));
    eventually("new state", || {
        sidecar
            .registry
            .get(&key("prices", &["A"]))
            .unwrap()
            .latest()
            .unwrap()
            .data
            == "{\"p\":3}"
    })
    .await;
    let changed = get(sidecar.port, "/api/prices/A", &[("If-None-Match", etag.as_str())]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "{\"p\":3}");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn short_poll_before_any_data_is_503_with_retry_after() {
    let (backend, sidecar) = setup().await;
    backend.set("/prices/SLOW", Behaviour::Hang);
    let reply = get(sidecar.port, "/api/prices/SLOW", &[]).await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(reply.text().contains("no data"));
}

#[tokio::test]
async fn timeouts_clamping_and_malformed_input() {
    let backend = TestBackend::start().await;
    backend.set("/prices/T", Behaviour::Json("1".into()));
    let sidecar = TestSidecar::start(backend.port, "long_poll_max_wait_ms = 300", TOPICS).await;
    let first = get(sidecar.port, "/api/prices/T?wait=5", &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_string();

    // Asks for 60 s, capped at 300 ms: a 304 with the same ETag soon after.
    let started = Instant::now();
    let reply = get(
        sidecar.port,
        "/api/prices/T?wait=60",
        &[("If-None-Match", etag.as_str())],
    )
    .await;
    let held = started.elapsed();
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("etag"), Some(etag.as_str()));
    assert!(held >= Duration::from_millis(300), "held for the wait: {held:?}");
    assert!(held < Duration::from_secs(5), "clamped: {held:?}");

    // Prefer: wait= and ?cursor= work as well.
    let cursor = unquote(&etag);
    let reply = get(
        sidecar.port,
        &format!("/api/prices/T?cursor={cursor}"),
        &[("Prefer", "wait=0.1")],
    )
    .await;
    assert_eq!(reply.status, 304);

    for (path, headers) in [
        ("/api/prices/T?wait=soon", vec![]),
        ("/api/prices/T?wait=-1", vec![]),
        ("/api/prices/T?wait=1&cursor=garbage", vec![]),
        ("/api/prices/T?wait=1", vec![("If-None-Match", "\"nope\"")]),
        ("/api/prices/T?cursor=garbage", vec![]),
        ("/api/prices/T?transport=carrier-pigeon", vec![]),
    ] {
        let reply = get(sidecar.port, path, &headers).await;
        assert_eq!(reply.status, 400, "{path} {headers:?}");
        assert!(
            reply.text().contains("malformed") || reply.text().contains("unknown"),
            "{}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn switched_off_transports_are_refused_with_a_reason() {
    let (backend, sidecar) = setup().await;
    backend.set("/only-sse-source", Behaviour::Json("1".into()));
    for (path, headers) in [("/only-sse", vec![]), ("/only-sse?wait=1", vec![])] {
        let reply = get(sidecar.port, path, &headers).await;
        assert_eq!(reply.status, 406, "{path}");
        assert!(reply.text().contains("switched off"), "{}", reply.text());
    }
    let mut sse = SseClient::connect(sidecar.port, "/only-sse", &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_event().await.is_some());
}

#[tokio::test]
async fn a_client_that_leaves_a_held_poll_frees_it_at_once() {
    let (_backend, sidecar) = setup().await;
    get(sidecar.port, "/feed?wait=0", &[]).await;
    let topic = sidecar.registry.get(&key("feed", &[])).unwrap();
    // After the poller's first message nothing new comes, so the poll below stays held.
    eventually("poller's first message", || topic.cursor().seq >= 1).await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr()).await.unwrap();
    stream
        .write_all(b"GET /feed?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("held", || topic.subscriber_count() == 1).await;
    drop(stream);
    eventually("freed", || topic.subscriber_count() == 0).await;
}

#[tokio::test]
async fn same_message_same_cursor_on_every_transport() {
    let (backend, sidecar) = setup().await;
    let mut sse = SseClient::connect(sidecar.port, "/api/prices/A", &[]).await;
    let first = sse.next_event().await.unwrap();
    let first_id = first.id.unwrap();

    let long_poll = tokio::spawn({
        let port = sidecar.port;
        let etag = format!("\"{first_id}\"");
        async move { get(port, "/api/prices/A?wait=10", &[("If-None-Match", etag.as_str())]).await }
    });
    let topic = sidecar.registry.get(&key("prices", &["A"])).unwrap();
    eventually("long poll held", || topic.subscriber_count() == 2).await;
    backend.set("/prices/A", Behaviour::Json("{\"p\":42}".into()));

    let event = sse.next_event().await.unwrap();
    let held = long_poll.await.unwrap();
    let short = get(sidecar.port, "/api/prices/A", &[]).await;
    let id = event.id.unwrap();
    assert_eq!(event.data.as_deref(), Some("{\"p\":42}"));
    assert_eq!(held.text(), "{\"p\":42}");
    assert_eq!(short.text(), "{\"p\":42}");
    assert_eq!(unquote(held.header("etag").unwrap()), id);
    assert_eq!(unquote(short.header("etag").unwrap()), id);

    // Event topics too: the SSE id is the batch entry id.
    let mut events = SseClient::connect(sidecar.port, "/feed", &[]).await;
    let feed = sidecar.registry.get(&key("feed", &[])).unwrap();
    // The poller's first message comes first on the stream; start after it.
    assert_eq!(events.next_event().await.unwrap().data.as_deref(), Some("0"));
    let before = feed.cursor();
    let long_poll = tokio::spawn({
        let port = sidecar.port;
        async move { get(port, &format!("/feed?wait=10&cursor={before}"), &[]).await }
    });
    eventually("both subscribed", || feed.subscriber_count() == 2).await;
    feed.publish(Payload {
        data: Bytes::from_static(b"{\"hello\":true}"),
        ..Payload::default()
    });
    let event = events.next_event().await.unwrap();
    let batch: Value = serde_json::from_slice(&long_poll.await.unwrap().body).unwrap();
    assert_eq!(batch["messages"][0]["id"].as_str(), event.id.as_deref());
    assert_eq!(batch["messages"][0]["data"]["hello"], true);
    let short: Value = serde_json::from_slice(
        &get(sidecar.port, &format!("/feed?cursor={before}"), &[])
            .await
            .body,
    )
    .unwrap();
    assert_eq!(short["messages"][0]["id"].as_str(), event.id.as_deref());
}

/// A held long poll waits off pingora's request path; its answer must still carry the
/// CORS headers, and the connection must go back to the keep-alive loop for the next request.
#[tokio::test]
async fn a_held_long_poll_answers_with_cors_and_keeps_its_connection() {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    let topics = format!("{TOPICS}\n[cors]\nallowed_origins = [\"https://app.example.com\"]\n");
    let sidecar = TestSidecar::start(backend.port, "long_poll_max_wait_ms = 10000", &topics).await;
    get(sidecar.port, "/feed?wait=0", &[]).await;
    let topic = sidecar.registry.get(&key("feed", &[])).unwrap();
    eventually("poller's first message", || topic.cursor().seq >= 1).await;
    let seen = topic.cursor();

    let mut stream = tokio::net::TcpStream::connect(sidecar.addr()).await.unwrap();
    let held = format!(
        "GET /feed?wait=10&cursor={seen} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\n\r\n"
    );
    stream.write_all(held.as_bytes()).await.unwrap();
    eventually("held", || topic.subscriber_count() == 1).await;
    backend.set("/feed-source", Behaviour::Json("1".into()));
    let (status, headers, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&headers, "vary"), Some("Origin"));
    assert_ne!(header(&headers, "connection"), Some("close"));
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["messages"][0]["data"], 1);
    let cursor = answer["cursor"].as_str().unwrap().to_string();
    eventually("the held poll is done", || topic.subscriber_count() == 0).await;

    // The same connection serves the next requests: another held poll, then a quick one.
    let next = format!("GET /feed?wait=10&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(next.as_bytes()).await.unwrap();
    eventually("held again", || topic.subscriber_count() == 1).await;
    backend.set("/feed-source", Behaviour::Json("2".into()));
    let (status, headers, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        None,
        "no Origin, no CORS"
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["messages"][0]["data"], 2);
    stream
        .write_all(b"GET /feed?wait=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut stream).await;
    assert_eq!(
        status, 304,
        "an event topic without a cursor starts now: nothing yet"
    );

    // A client that pipelines its next request behind a held poll (in the same segment, or
    // while it is held) gets the held answer and then the connection closes, as pingora
    // does for any request it read past: it retries the next one on a new connection.
    for split in [false, true] {
        let mut stream = tokio::net::TcpStream::connect(sidecar.addr()).await.unwrap();
        let cursor = topic.cursor();
        let held = format!("GET /feed?wait=10&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
        let next = format!("GET /feed?wait=0&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
        if split {
            stream.write_all(held.as_bytes()).await.unwrap();
            eventually("held", || topic.subscriber_count() == 1).await;
            stream.write_all(next.as_bytes()).await.unwrap();
        } else {
            stream
                .write_all(format!("{held}{next}").as_bytes())
                .await
                .unwrap();
            eventually("held", || topic.subscriber_count() == 1).await;
        }
        let value = if split { "5" } else { "4" };
        backend.set("/feed-source", Behaviour::Json(value.into()));
        let (status, headers, body) = read_response(&mut stream).await;
        assert_eq!(status, 200, "{body}");
        if split {
            // (In one segment pingora read both and holds it in place: it then closes
            // without saying so first.)
            assert_eq!(header(&headers, "connection"), Some("close"));
        }
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the connection closes after the held answer (split: {split})"
        );
        assert!(
            rest.is_empty(),
            "nothing more is answered: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}
