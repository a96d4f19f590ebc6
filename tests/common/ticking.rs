//! A backend `text/event-stream` that stays open: event `n` (id = n, data = `{"n":n}`) exists
//! from `n × tick` after start, like a real feed with history. A connection with
//! `Last-Event-ID: k` first gets `k+1..=now`, then each new event as it appears; without one it
//! starts at the next event. It counts connections and how many are open at once (the cluster
//! tests assert one stream cluster-wide). Written on a raw socket because the shared
//! `TestBackend` answers whole bodies only. Paths under [`COUNTER_PREFIX`] answer a counting
//! poll instead, so one backend (a cluster's instances share one `base_url`) can feed a poll
//! topic and a stream topic.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `GET /count/<anything>` answers `{"n":<requests seen on that path, this one included>}`
/// with no validators (every poll is a change, like `Behaviour::Counter`) and closes.
pub const COUNTER_PREFIX: &str = "/count/";

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// Requests per counter path.
    polls: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

pub struct TickingStream {
    pub port: u16,
    tick: Duration,
    started: Instant,
    counters: Arc<Counters>,
    /// The `Last-Event-ID` of every connection, in order (`None`: none sent).
    resumes: Arc<std::sync::Mutex<Vec<Option<u64>>>>,
    accept: JoinHandle<()>,
}

impl TickingStream {
    pub async fn start(tick: Duration) -> TickingStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let resumes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (counters, resumes) = (counters.clone(), resumes.clone());
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let (counters, resumes) = (counters.clone(), resumes.clone());
                    connections.spawn(serve(stream, started, tick, counters, resumes));
                }
            })
        };
        TickingStream {
            port,
            tick,
            started,
            counters,
            resumes,
            accept,
        }
    }

    /// The newest event that exists now.
    pub fn current(&self) -> u64 {
        latest(self.started, self.tick)
    }

    /// Stream connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Streams open right now.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// The most streams that were ever open at once.
    pub fn max_open(&self) -> usize {
        self.counters.max_open.load(Ordering::SeqCst)
    }

    pub fn resumes(&self) -> Vec<Option<u64>> {
        self.resumes.lock().unwrap().clone()
    }

    /// Requests seen so far on a [`COUNTER_PREFIX`] path.
    pub fn hit_count(&self, path: &str) -> u64 {
        self.counters
            .polls
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for TickingStream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.accept.abort();
    }
}

fn latest(started: Instant, tick: Duration) -> u64 {
    (started.elapsed().as_millis() / tick.as_millis().max(1)) as u64
}

/// Decrements `open` however the connection ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    mut stream: TcpStream,
    started: Instant,
    tick: Duration,
    counters: Arc<Counters>,
    resumes: Arc<std::sync::Mutex<Vec<Option<u64>>>>,
) {
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    if path.starts_with(COUNTER_PREFIX) {
        let n = {
            let mut polls = counters.polls.lock().unwrap();
            let n = polls.entry(path).or_default();
            *n += 1;
            *n
        };
        let body = format!("{{\"n\":{n}}}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    }
    let last_event_id = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("last-event-id")
            .then(|| value.trim().parse::<u64>().ok())
            .flatten()
    });
    counters.connections.fetch_add(1, Ordering::SeqCst);
    let open = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_open.fetch_max(open, Ordering::SeqCst);
    let _guard = OpenGuard(counters);
    resumes.lock().unwrap().push(last_event_id);
    let response = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let mut next = last_event_id.map_or_else(|| latest(started, tick) + 1, |k| k + 1);
    let mut ticks = tokio::time::interval(tick);
    loop {
        let mut body = String::new();
        while next <= latest(started, tick) {
            body.push_str(&format!("id: {next}\ndata: {{\"n\":{next}}}\n\n"));
            next += 1;
        }
        if body.is_empty() {
            // A comment now and then, so a peer that went away is noticed by a failed write.
            body.push_str(": tick\n\n");
        }
        let chunk = format!("{:x}\r\n{body}\r\n", body.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        ticks.tick().await;
    }
}
