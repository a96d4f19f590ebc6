//! What a client saw, message by message, over any transport and across reconnects — and the
//! checks the cluster tests make on it: every message once, in order, one cursor sequence, no
//! reset.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::ws::WsClient;
use super::{get, request, Reply, SseClient, PUBLISH_TOKEN};

/// One delivered message: the number it carries and its cursor (`{epoch}-{seq}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub n: u64,
    pub id: String,
}

/// Everything one logical client received, in order, over all its connections.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub what: String,
    pub got: Vec<Got>,
    /// Resets and any other notice a clean resume must not produce.
    pub unexpected: Vec<String>,
    /// Index in `got` where each reconnect started.
    pub reconnects: Vec<usize>,
}

impl Trace {
    pub fn new(what: &str) -> Trace {
        Trace {
            what: what.to_string(),
            ..Trace::default()
        }
    }

    pub fn last_n(&self) -> Option<u64> {
        self.got.last().map(|g| g.n)
    }

    pub fn last_id(&self) -> Option<&str> {
        self.got.last().map(|g| g.id.as_str())
    }

    pub fn numbers(&self) -> Vec<u64> {
        self.got.iter().map(|g| g.n).collect()
    }

    pub fn reconnected(&mut self) {
        self.reconnects.push(self.got.len());
    }

    /// Every number once, each one more than the one before (from the first one seen), the
    /// cursor's seq likewise in one epoch, nothing unexpected. `Err` describes the first fault
    /// with its neighbourhood.
    pub fn check_contiguous(&self) -> Result<(), String> {
        if !self.unexpected.is_empty() {
            return Err(format!("{}: unexpected {:?}", self.what, self.unexpected));
        }
        for (i, pair) in self.got.windows(2).enumerate() {
            let (a, b) = (&pair[0], &pair[1]);
            let (epoch_a, seq_a) = split_cursor(&a.id);
            let (epoch_b, seq_b) = split_cursor(&b.id);
            if b.n != a.n + 1 || epoch_a != epoch_b || seq_b != seq_a + 1 {
                let from = i.saturating_sub(3);
                let to = (i + 5).min(self.got.len());
                return Err(format!(
                    "{}: after n={} (id {}) came n={} (id {}) at index {} (reconnects at {:?}); \
                     around it: {:?}",
                    self.what,
                    a.n,
                    a.id,
                    b.n,
                    b.id,
                    i + 1,
                    self.reconnects,
                    &self.got[from..to]
                ));
            }
        }
        Ok(())
    }
}

/// `{epoch}-{seq}` → (epoch, seq); the epoch may itself contain no `-` (design: unchanged
/// wire format), so the seq is what follows the last one.
pub fn split_cursor(cursor: &str) -> (&str, u64) {
    let (epoch, seq) = cursor
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("not a cursor: {cursor:?}"));
    (
        epoch,
        seq.parse().unwrap_or_else(|_| panic!("not a cursor: {cursor:?}")),
    )
}

/// The number a test message carries: a pushed body `17`, or a stream event `{"n":17}`.
pub fn number_in(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| number_in(&v)),
        serde_json::Value::Object(map) => map.get("n").and_then(serde_json::Value::as_u64),
        _ => None,
    }
}

fn number_in_text(data: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| number_in(&v))
}

/// Reads SSE events into `trace` until `done(trace)` holds (`true`) or the stream ends
/// (`false`). `stale` notices (no id, cursors untouched) are skipped; a `reset` or anything
/// unparsable is recorded as unexpected.
pub async fn read_sse(
    client: &mut SseClient,
    trace: &mut Trace,
    mut done: impl FnMut(&Trace) -> bool,
) -> bool {
    while !done(trace) {
        let Some(event) = client.next_event().await else {
            return false;
        };
        match event.event.as_deref() {
            Some("stale") => continue,
            None | Some("message") => {}
            Some(other) => {
                trace
                    .unexpected
                    .push(format!("event: {other} id={:?} data={:?}", event.id, event.data));
                continue;
            }
        }
        let data = event.data.unwrap_or_default();
        match (number_in_text(&data), event.id) {
            (Some(n), Some(id)) => trace.got.push(Got { n, id }),
            (_, id) => trace.unexpected.push(format!("event id={id:?} data={data:?}")),
        }
    }
    true
}

/// Long polls `path` on `port` from `cursor` (`?wait=2&cursor=…`) until `done(trace)`;
/// returns the cursor to continue from. A `"reset": true` batch is recorded as unexpected.
pub async fn read_long_poll(
    port: u16,
    path: &str,
    mut cursor: String,
    trace: &mut Trace,
    mut done: impl FnMut(&Trace) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + super::WAIT * 2;
    while !done(trace) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: long polls did not get there within the bound (last {:?})",
            trace.what,
            trace.last_n()
        );
        let reply = get(port, &format!("{path}?wait=2&cursor={cursor}"), &[]).await;
        if reply.status == 304 {
            continue;
        }
        assert_eq!(
            reply.status,
            200,
            "{}: long poll answered {}",
            trace.what,
            reply.text()
        );
        let batch: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        if batch["reset"] != false {
            trace.unexpected.push(format!("long poll batch {batch}"));
        }
        for message in batch["messages"].as_array().cloned().unwrap_or_default() {
            let id = message["id"].as_str().unwrap_or_default().to_string();
            match number_in(&message["data"]) {
                Some(n) => trace.got.push(Got { n, id }),
                None => trace.unexpected.push(format!("long poll message {message}")),
            }
        }
        cursor = batch["cursor"].as_str().unwrap().to_string();
    }
    cursor
}

/// Reads JSON-envelope WebSocket messages (`{"id","event","data"}`) until `done(trace)`. A
/// `{"reset":true,…}` notice is recorded as unexpected.
pub async fn read_ws(client: &mut WsClient, trace: &mut Trace, mut done: impl FnMut(&Trace) -> bool) {
    while !done(trace) {
        let frame = client.read_message().await;
        let message: serde_json::Value = match serde_json::from_slice(&frame.payload) {
            Ok(message) => message,
            Err(_) => {
                trace
                    .unexpected
                    .push(format!("websocket message {:?}", frame.text()));
                continue;
            }
        };
        if message.get("reset").is_some() {
            trace.unexpected.push(format!("websocket notice {message}"));
            continue;
        }
        let id = message["id"].as_str().unwrap_or_default().to_string();
        match number_in(&message["data"]) {
            Some(n) => trace.got.push(Got { n, id }),
            None => trace.unexpected.push(format!("websocket message {message}")),
        }
    }
}

/// `POST /publish/<topic path>` on an admin port with the publish token (and an
/// `Idempotency-Key` if given).
pub async fn publish(admin_port: u16, topic_path: &str, body: &str, idempotency_key: Option<&str>) -> Reply {
    let auth = format!("Bearer {PUBLISH_TOKEN}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(key) = idempotency_key {
        headers.push(("Idempotency-Key", key));
    }
    request(
        admin_port,
        "POST",
        &format!("/publish{topic_path}"),
        &headers,
        body,
    )
    .await
}

/// [`publish`], asserting `200`; the reply's JSON (`{"cursor","cursors","duplicates"}`).
pub async fn publish_ok(
    admin_port: u16,
    topic_path: &str,
    body: &str,
    idempotency_key: Option<&str>,
) -> serde_json::Value {
    let reply = publish(admin_port, topic_path, body, idempotency_key).await;
    assert_eq!(
        reply.status,
        200,
        "publish {body} to {topic_path} on admin port {admin_port}: {}",
        reply.text()
    );
    serde_json::from_slice(&reply.body).unwrap()
}

/// A background publisher: bodies `from..=to` to `topic_path` on `admin_port`, one every
/// `every` (a missed tick is caught up, so the rate holds on average), each asserted `200`.
pub struct Publisher {
    /// The highest number published so far (0 before the first).
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Publisher {
    pub fn start(
        admin_port: u16,
        topic_path: &str,
        from: u64,
        to: u64,
        every: std::time::Duration,
    ) -> Publisher {
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let topic_path = topic_path.to_string();
        let task = tokio::spawn({
            let progress = progress.clone();
            async move {
                let mut cursors = Vec::new();
                let mut ticks = tokio::time::interval(every);
                for n in from..=to {
                    ticks.tick().await;
                    let reply = publish_ok(admin_port, &topic_path, &n.to_string(), None).await;
                    cursors.push(reply["cursor"].as_str().unwrap().to_string());
                    progress.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                cursors
            }
        });
        Publisher { progress, task }
    }

    pub fn published(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the last publish; the cursors of `from..=to`, in order.
    pub async fn finish(self) -> Vec<String> {
        tokio::time::timeout(super::WAIT * 3, self.task)
            .await
            .expect("the publisher finishes within the bound")
            .expect("every publish succeeded")
    }
}
