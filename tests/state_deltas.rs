//! State topics send only what changed (issue 17): `ignore_fields` in change detection, and
//! `deltas = true` with `?delta=json-patch` on SSE, WebSocket and long poll.
//!
//! The delta tests are property tests over seeded random JSON documents and random edit
//! sequences (bursts, resumes from a cursor in history, from one that fell out of it and from
//! another epoch): a client that applies every patch it receives, starting from its first
//! full state, holds exactly the latest state after every burst.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::random_json::{edit, random_document};
use common::ws::WsClient;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sidestream::hub::TopicKey;

const TOPICS: &str = r#"
[[topic]]
name = "board"
path = "/board/{id}"
source.push = {}
mode = "state"
deltas = true
history_max_messages = 8
# Bursts of up to 3 overflow it: conflated clients skip states and must get the full one.
queue_max_messages = 2
websocket = { envelope = "json" }

[[topic]]
name = "crowd"
path = "/crowd"
source.push = {}
mode = "state"
deltas = true

[[topic]]
name = "stamped"
path = "/stamped"
source.poll = { url = "/stamped", interval_ms = 20, jitter_ms = 0 }
ignore_fields = ["/updated_at"]
"#;

async fn setup() -> (std::sync::Arc<TestBackend>, TestSidecar) {
    let backend = TestBackend::start().await;
    let sidecar = TestSidecar::start(backend.port, "", TOPICS).await;
    (backend, sidecar)
}

/// Pushes `document` as the new state of `path` (`/board/x`); returns its cursor.
async fn publish(sidecar: &TestSidecar, path: &str, document: &Value) -> String {
    let bearer = format!("Bearer {PUBLISH_TOKEN}");
    let reply = request(
        sidecar.admin_port,
        "POST",
        &format!("/publish{path}"),
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        &document.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    answer["cursor"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// A client that keeps the document
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Follower {
    document: Option<Value>,
    cursor: Option<String>,
    fulls: usize,
    patches: usize,
    /// Patches that were the first thing after a (re)connection with a cursor: resumes.
    resume_patches: usize,
    resets: usize,
    fresh_connection: bool,
}

impl Follower {
    fn full(&mut self, id: &str, data: &str) {
        self.document = Some(serde_json::from_str(data).unwrap());
        self.cursor = Some(id.to_string());
        self.fulls += 1;
        self.fresh_connection = false;
    }

    fn patch(&mut self, id: &str, patch: Value) {
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        let document = self.document.as_mut().expect("a patch comes after a full state");
        json_patch::patch(document, &patch).unwrap_or_else(|e| panic!("the patch applies: {e}"));
        self.cursor = Some(id.to_string());
        self.patches += 1;
        if std::mem::take(&mut self.fresh_connection) {
            self.resume_patches += 1;
        }
    }

    fn reconnected(&mut self) {
        self.fresh_connection = true;
    }

    async fn follow_sse(&mut self, client: &mut SseClient, until: &str) {
        while self.cursor.as_deref() != Some(until) {
            let event = client.next_event().await.expect("the stream goes on");
            let id = event.id.clone().unwrap_or_default();
            let data = event.data.clone().unwrap();
            match event.event.as_deref() {
                Some("patch") => self.patch(&id, serde_json::from_str(&data).unwrap()),
                Some("reset") => self.resets += 1,
                None | Some("message") => self.full(&id, &data),
                Some(other) => panic!("unexpected event {other}"),
            }
        }
    }

    async fn follow_websocket(&mut self, client: &mut WsClient, until: &str) {
        while self.cursor.as_deref() != Some(until) {
            let frame = client.read_message().await;
            let envelope: Value = serde_json::from_slice(&frame.payload).unwrap();
            if envelope["reset"] == true {
                self.resets += 1;
                continue;
            }
            let id = envelope["id"].as_str().unwrap().to_string();
            assert_eq!(envelope["event"], "message");
            match (envelope.get("patch"), envelope.get("data")) {
                (Some(patch), None) => self.patch(&id, patch.clone()),
                (None, Some(data)) => {
                    let data = data.to_string();
                    self.full(&id, &data);
                }
                _ => panic!("neither a patch nor a state: {envelope}"),
            }
        }
    }

    /// Long polls from the cursor it holds until it holds `until`.
    async fn follow_long_poll(&mut self, port: u16, path: &str, until: &str) {
        while self.cursor.as_deref() != Some(until) {
            let target = match &self.cursor {
                Some(cursor) => format!("{path}?delta=json-patch&wait=5&cursor={cursor}"),
                None => format!("{path}?delta=json-patch&wait=5"),
            };
            let reply = get(port, &target, &[]).await;
            if reply.status == 304 {
                continue;
            }
            assert_eq!(reply.status, 200, "{}", reply.text());
            let etag = reply.header("etag").unwrap().trim_matches('"').to_string();
            match reply.header("content-type") {
                Some("application/json-patch+json") => {
                    self.patch(&etag, serde_json::from_slice(&reply.body).unwrap())
                }
                Some("application/json") => self.full(&etag, &reply.text()),
                other => panic!("unexpected content type {other:?}"),
            }
        }
    }
}

/// What a resume does in a round of a property test.
enum Resume {
    None,
    /// Reconnect with the cursor held, a few messages later (still in history).
    InHistory,
    /// Reconnect with the cursor held after history moved past it.
    Evicted,
    /// Reconnect with a cursor of another epoch.
    OtherEpoch,
}

fn pick_resume(rng: &mut StdRng) -> Resume {
    match rng.random_range(0..12) {
        0 | 1 => Resume::InHistory,
        2 => Resume::Evicted,
        3 => Resume::OtherEpoch,
        _ => Resume::None,
    }
}

/// How an SSE or WebSocket client goes on after a burst: stays connected (`None`), or
/// reconnects from its cursor (in history), from a cursor pushed out of history (a flood
/// first, which moves `latest_cursor`), or from another epoch.
async fn reconnect_from(
    rng: &mut StdRng,
    sidecar: &TestSidecar,
    path: &str,
    latest: &mut Value,
    latest_cursor: &mut String,
    follower: &Follower,
) -> Option<String> {
    match pick_resume(rng) {
        Resume::None => None,
        Resume::InHistory => Some(follower.cursor.clone().unwrap()),
        Resume::Evicted => {
            *latest_cursor = flood(rng, sidecar, path, latest).await;
            Some(follower.cursor.clone().unwrap())
        }
        Resume::OtherEpoch => Some(OTHER_EPOCH.to_string()),
    }
}

/// Applies 1..=3 random edits, publishing each; returns the latest cursor.
async fn burst(rng: &mut StdRng, sidecar: &TestSidecar, path: &str, latest: &mut Value) -> String {
    let mut cursor = String::new();
    for _ in 0..rng.random_range(1..=3) {
        edit(rng, latest, 0);
        cursor = publish(sidecar, path, latest).await;
    }
    cursor
}

/// Publishes enough edits that history (8 messages) no longer holds the client's state.
async fn flood(rng: &mut StdRng, sidecar: &TestSidecar, path: &str, latest: &mut Value) -> String {
    let mut cursor = String::new();
    for _ in 0..10 {
        edit(rng, latest, 0);
        cursor = publish(sidecar, path, latest).await;
    }
    cursor
}

const OTHER_EPOCH: &str = "zzzzzz-1";

/// Totals over every seed, so each path is known to be exercised.
#[derive(Default, Debug)]
struct Coverage {
    patches: usize,
    fulls: usize,
    resume_patches: usize,
    resets: usize,
}

impl Coverage {
    fn add(&mut self, follower: &Follower) {
        self.patches += follower.patches;
        self.fulls += follower.fulls;
        self.resume_patches += follower.resume_patches;
        self.resets += follower.resets;
    }

    fn assert_every_path(&self) {
        assert!(self.patches > 50, "{self:?}");
        assert!(self.resume_patches > 0, "{self:?}");
        assert!(self.resets > 0, "{self:?}");
        assert!(self.fulls > 5, "{self:?}");
    }
}

const SEEDS: u64 = 3;
const ROUNDS: usize = 40;

#[tokio::test]
async fn sse_patches_rebuild_every_state_including_resumes() {
    let (_backend, sidecar) = setup().await;
    let mut coverage = Coverage::default();
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let path = format!("/board/sse{seed}");
        let stream = format!("{path}?delta=json-patch");
        let mut latest = random_document(&mut rng);
        let mut latest_cursor = publish(&sidecar, &path, &latest).await;
        let mut client = SseClient::connect(sidecar.port, &stream, &[]).await;
        let mut follower = Follower::default();
        follower.follow_sse(&mut client, &latest_cursor).await;
        assert_eq!(follower.document.as_ref(), Some(&latest));
        for round in 0..ROUNDS {
            latest_cursor = burst(&mut rng, &sidecar, &path, &mut latest).await;
            let from = reconnect_from(
                &mut rng,
                &sidecar,
                &path,
                &mut latest,
                &mut latest_cursor,
                &follower,
            )
            .await;
            if let Some(from) = from {
                drop(client);
                client = SseClient::connect(sidecar.port, &stream, &[("Last-Event-ID", &from)]).await;
                follower.reconnected();
            }
            follower.follow_sse(&mut client, &latest_cursor).await;
            assert_eq!(
                follower.document.as_ref(),
                Some(&latest),
                "seed {seed}, round {round}"
            );
        }
        coverage.add(&follower);
    }
    coverage.assert_every_path();
}

#[tokio::test]
async fn websocket_patches_rebuild_every_state_including_resumes() {
    let (_backend, sidecar) = setup().await;
    let mut coverage = Coverage::default();
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let path = format!("/board/ws{seed}");
        // Every other seed with permessage-deflate: the shared patch frames deflated too.
        let extensions = (seed % 2 == 1).then_some("permessage-deflate");
        let mut latest = random_document(&mut rng);
        let mut latest_cursor = publish(&sidecar, &path, &latest).await;
        let url = format!("{path}?delta=json-patch");
        let mut client = WsClient::connect(sidecar.port, &url, extensions, &[]).await;
        assert_eq!(client.status, 101);
        let mut follower = Follower::default();
        follower.follow_websocket(&mut client, &latest_cursor).await;
        for round in 0..ROUNDS {
            latest_cursor = burst(&mut rng, &sidecar, &path, &mut latest).await;
            let from = reconnect_from(
                &mut rng,
                &sidecar,
                &path,
                &mut latest,
                &mut latest_cursor,
                &follower,
            )
            .await;
            if let Some(from) = from {
                drop(client);
                let url = format!("{path}?delta=json-patch&cursor={from}");
                client = WsClient::connect(sidecar.port, &url, extensions, &[]).await;
                follower.reconnected();
            }
            follower.follow_websocket(&mut client, &latest_cursor).await;
            assert_eq!(
                follower.document.as_ref(),
                Some(&latest),
                "seed {seed}, round {round}"
            );
        }
        coverage.add(&follower);
    }
    coverage.assert_every_path();
}

#[tokio::test]
async fn long_poll_patches_rebuild_every_state_including_resumes() {
    let (_backend, sidecar) = setup().await;
    let mut coverage = Coverage::default();
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(200 + seed);
        let path = format!("/board/lp{seed}");
        let mut latest = random_document(&mut rng);
        let mut latest_cursor = publish(&sidecar, &path, &latest).await;
        let mut follower = Follower::default();
        follower
            .follow_long_poll(sidecar.port, &path, &latest_cursor)
            .await;
        assert_eq!(follower.fulls, 1, "no cursor: the full state");
        for round in 0..ROUNDS {
            // Every poll after a burst resumes from a state in history.
            follower.reconnected();
            latest_cursor = burst(&mut rng, &sidecar, &path, &mut latest).await;
            match pick_resume(&mut rng) {
                Resume::Evicted => {
                    latest_cursor = flood(&mut rng, &sidecar, &path, &mut latest).await;
                }
                Resume::OtherEpoch => {
                    // A cursor the server never gave: the full state, with its own type.
                    follower.cursor = Some(OTHER_EPOCH.to_string());
                    follower.resets += 1;
                }
                Resume::None | Resume::InHistory => {}
            }
            follower
                .follow_long_poll(sidecar.port, &path, &latest_cursor)
                .await;
            assert_eq!(
                follower.document.as_ref(),
                Some(&latest),
                "seed {seed}, round {round}"
            );
        }
        coverage.add(&follower);
    }
    coverage.assert_every_path();
}

#[tokio::test]
async fn a_long_poll_held_on_the_latest_state_is_answered_with_the_message_patch() {
    let (_backend, sidecar) = setup().await;
    let path = "/board/held";
    let mut document = json!({"rows": (0..50).collect::<Vec<_>>(), "title": "held"});
    let first = publish(&sidecar, path, &document).await;
    let poll = tokio::spawn({
        let port = sidecar.port;
        let target = format!("{path}?delta=json-patch&wait=5&cursor={first}");
        async move { get(port, &target, &[]).await }
    });
    let topic = sidecar
        .registry
        .get(&TopicKey::new("board", vec!["held".into()]))
        .unwrap();
    eventually("the poll is held", || topic.subscriber_count() == 1).await;
    document["title"] = json!("changed");
    let second = publish(&sidecar, path, &document).await;
    let reply = poll.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json-patch+json"));
    assert_eq!(reply.header("etag"), Some(format!("\"{second}\"").as_str()));
    let patch: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "/title", "value": "changed"}])
    );
    // Up to date: nothing new, 304, as without deltas.
    let reply = get(
        sidecar.port,
        &format!("{path}?delta=json-patch&wait=0&cursor={second}"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 304);
}

#[tokio::test]
async fn a_patch_not_smaller_than_the_document_is_sent_as_the_full_state() {
    let (_backend, sidecar) = setup().await;
    let path = "/board/big";
    let before = metric(
        sidecar.admin_port,
        "sidestream_delta_full_fallbacks_total",
        &[("topic", "board")],
    )
    .await;
    publish(&sidecar, path, &json!({"a": 1})).await;
    let mut client = SseClient::connect(sidecar.port, &format!("{path}?delta=json-patch"), &[]).await;
    let first = client.next_event().await.unwrap();
    assert_eq!(first.event, None);
    // Everything changes: remove + add is longer than the new document itself.
    let cursor = publish(&sidecar, path, &json!({"b": 2})).await;
    let next = client.next_event().await.unwrap();
    assert_eq!(next.event, None, "a normal state event, not `event: patch`");
    assert_eq!(next.id.as_deref(), Some(cursor.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&next.data.unwrap()).unwrap(),
        json!({"b": 2})
    );
    let after = metric(
        sidecar.admin_port,
        "sidestream_delta_full_fallbacks_total",
        &[("topic", "board")],
    )
    .await;
    assert!(after > before, "counted: {before} → {after}");
}

#[tokio::test]
async fn two_hundred_delta_subscribers_cost_one_patch_computation_per_message() {
    let (_backend, sidecar) = setup().await;
    let mut document = json!({"rows": (0..100).map(|n| json!({"id": n, "value": 0})).collect::<Vec<_>>()});
    publish(&sidecar, "/crowd", &document).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut client = SseClient::connect(sidecar.port, "/crowd?delta=json-patch", &[]).await;
        let first = client.next_event().await.unwrap();
        assert_eq!(first.event, None, "the full state first");
        clients.push(client);
    }
    let topic = sidecar.registry.get(&TopicKey::new("crowd", vec![])).unwrap();
    eventually("200 subscribers", || topic.subscriber_count() == 200).await;
    let admin = sidecar.admin_port;
    let computed = move |kind: &'static str| async move {
        metric(
            admin,
            "sidestream_delta_computations_total",
            &[("topic", "crowd"), ("kind", kind)],
        )
        .await
    };
    assert_eq!(computed("publish").await, 0.0, "nothing before the first state");
    const MESSAGES: usize = 10;
    let mut last = String::new();
    for n in 0..MESSAGES {
        document["rows"][n]["value"] = json!(n + 1);
        last = publish(&sidecar, "/crowd", &document).await;
    }
    for client in &mut clients {
        let mut patches = 0;
        loop {
            let event = client.next_event().await.unwrap();
            assert_eq!(event.event.as_deref(), Some("patch"));
            patches += 1;
            if event.id.as_deref() == Some(last.as_str()) {
                break;
            }
        }
        assert_eq!(patches, MESSAGES);
    }
    assert_eq!(
        computed("publish").await,
        MESSAGES as f64,
        "one computation per message, not per message and client"
    );
    assert_eq!(computed("resume").await, 0.0);
    let patch_bytes = metric(
        sidecar.admin_port,
        "sidestream_delta_patch_bytes_total",
        &[("topic", "crowd")],
    )
    .await;
    let replaced = metric(
        sidecar.admin_port,
        "sidestream_delta_replaced_bytes_total",
        &[("topic", "crowd")],
    )
    .await;
    assert!(
        patch_bytes > 0.0 && patch_bytes * 20.0 < replaced,
        "{patch_bytes} vs {replaced}"
    );
}

#[tokio::test]
async fn clients_that_do_not_ask_for_deltas_get_full_states_and_unknown_formats_are_refused() {
    let (_backend, sidecar) = setup().await;
    let path = "/board/plain";
    let mut document = json!({"rows": (0..50).collect::<Vec<_>>(), "n": 0});
    publish(&sidecar, path, &document).await;
    let mut client = SseClient::connect(sidecar.port, path, &[]).await;
    client.next_event().await.unwrap();
    document["n"] = json!(1);
    publish(&sidecar, path, &document).await;
    let next = client.next_event().await.unwrap();
    assert_eq!(next.event, None);
    assert_eq!(
        serde_json::from_str::<Value>(&next.data.unwrap()).unwrap(),
        document
    );
    let refused = get(
        sidecar.port,
        &format!("{path}?delta=fossil"),
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("delta=json-patch"), "{}", refused.text());
}

#[tokio::test]
async fn ignore_fields_publish_nothing_for_a_volatile_field_and_one_message_for_a_real_change() {
    let (backend, sidecar) = setup().await;
    backend.set("/stamped", Behaviour::Stamped(r#"{"price":1,"name":"x"}"#.into()));
    let mut client = SseClient::connect(sidecar.port, "/stamped", &[]).await;
    let first = client.next_event().await.unwrap();
    let state: Value = serde_json::from_str(&first.data.unwrap()).unwrap();
    assert_eq!(state["price"], 1);
    let topic = sidecar.registry.get(&TopicKey::new("stamped", vec![])).unwrap();
    let polls = backend.hit_count("/stamped");
    eventually("20 more polls", || backend.hit_count("/stamped") >= polls + 20).await;
    assert_eq!(topic.cursor().seq, 1, "only updated_at changed: no message");
    let published = || {
        metric(
            sidecar.admin_port,
            "sidestream_messages_published_total",
            &[("topic", "stamped")],
        )
    };
    assert_eq!(published().await, 1.0);

    backend.set("/stamped", Behaviour::Stamped(r#"{"price":2,"name":"x"}"#.into()));
    let next = client.next_event().await.unwrap();
    let state: Value = serde_json::from_str(&next.data.unwrap()).unwrap();
    assert_eq!(state["price"], 2, "the change carries every current value");
    assert!(state["updated_at"].as_u64().unwrap() > 20);
    let polls = backend.hit_count("/stamped");
    eventually("20 more polls", || backend.hit_count("/stamped") >= polls + 20).await;
    assert_eq!(topic.cursor().seq, 2, "exactly one message for the real change");
    assert_eq!(published().await, 2.0);

    // Not JSON: an upstream error; the last good state is kept (and served as stale).
    let errors = || {
        metric(
            sidecar.admin_port,
            "sidestream_upstream_requests_total",
            &[("topic", "stamped"), ("outcome", "error")],
        )
    };
    assert_eq!(errors().await, 0.0);
    backend.set(
        "/stamped",
        Behaviour::Plain("application/octet-stream", "oops".into()),
    );
    eventually("stale", || topic.is_stale()).await;
    assert!(errors().await > 0.0);
    assert_eq!(topic.cursor().seq, 2);
    let reply = get(sidecar.port, "/stamped", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&reply.body).unwrap()["price"], 2);
}
