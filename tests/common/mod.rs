//! Shared test harness: a programmable backend, the sidecar in a thread, and small HTTP and
//! SSE clients. Everything binds loopback only; every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod cluster;
pub mod random_json;
pub mod raw;
pub mod redis;
pub mod ticking;
pub mod trace;
pub mod ws;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use sidestream::hub::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The publish token every test sidecar uses.
pub const PUBLISH_TOKEN: &str = "test-publish-token-0123456789";

/// A payload of `size` bytes that starts with `n` as six digits (see [`leading_number`]).
pub fn numbered_payload(n: usize, size: usize) -> sidestream::hub::Payload {
    let mut text = format!("{n:06}:");
    text.push_str(&"x".repeat(size.saturating_sub(text.len())));
    sidestream::hub::Payload {
        data: Bytes::from(text),
        ..sidestream::hub::Payload::default()
    }
}

/// The number a [`numbered_payload`] starts with.
pub fn leading_number(data: &str) -> usize {
    data[..6].parse().unwrap()
}

/// Sends SIGTERM to a spawned sidestream and waits (bounded) for it to exit.
pub async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process exits within the bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Ports handed to sidecars come from below the kernel's ephemeral range (32768–60999 here),
/// so that no `bind(0)` elsewhere (a test backend, a client socket) can take one between its
/// release here and pingora's bind. Each test process starts at its own offset.
const PORT_RANGE: std::ops::Range<u32> = 20_000..32_000;

/// A free loopback port from a small process-wide registry: bound and released once to check
/// it is free, never handed out twice (pingora cannot report the port it bound).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let offset = (std::process::id() % 200) * 50;
    for _ in 0..span {
        let candidate = PORT_RANGE.start + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(candidate).expect("in range");
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
}

/// Polls `check` every 20 ms until it holds or `WAIT` runs out.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Test backend
// ---------------------------------------------------------------------------------------

/// What the backend does for a path.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with this JSON body and a strong ETag derived from it; honours If-None-Match.
    Json(String),
    /// 200 with this body and content type, no validators at all.
    Plain(&'static str, String),
    /// This status with a short body.
    Status(u16),
    /// Never answers within any sane timeout.
    Hang,
    /// `text/event-stream` of events `1..=total` (id = n, data = `{"n":n}`), starting after
    /// the request's `Last-Event-ID`; each connection ends (the backend "drops" it) at the next
    /// of `drops` above where it started, and the last one after `total`.
    EventStream { total: u64, drops: Vec<u64> },
    /// 200 with JSON naming the value of this request header (an identity echo).
    EchoHeader(&'static str),
    /// 200 with this JSON and `Cache-Control: max-age=<seconds>`.
    JsonMaxAge(String, u64),
    /// 200 with JSON `{"n":<requests seen on this path>}` and no validators: every poll is
    /// a change.
    Counter,
    /// 200 with this body and content type, after this many milliseconds (a slow backend).
    Delayed(u64, &'static str, String),
    /// 200 with this JSON object plus `"updated_at": <requests seen on this path>`, no
    /// validators: every response differs, and only in that field.
    Stamped(String),
}

/// One request the backend saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

#[derive(Default)]
struct BackendState {
    routes: HashMap<String, Behaviour>,
    seen: Vec<Seen>,
    connections: Vec<tokio::task::AbortHandle>,
}

/// A programmable HTTP backend on a loopback port. `/echo...` echoes the request.
pub struct TestBackend {
    pub port: u16,
    state: Arc<Mutex<BackendState>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl TestBackend {
    pub async fn start() -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Arc::new(TestBackend {
            port,
            state: Arc::default(),
            accept: Mutex::new(None),
        });
        backend.serve(listener);
        backend
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let connection_state = state.clone();
                let state = state.clone();
                let connection = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                connection_state
                    .lock()
                    .unwrap()
                    .connections
                    .push(connection.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Stops listening: new connections are refused (backend down).
    pub fn go_down(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        for connection in self.state.lock().unwrap().connections.drain(..) {
            connection.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn come_back(self: &Arc<Self>) {
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(error) => panic!("cannot re-bind backend port: {error}"),
            }
        };
        self.serve(listener);
    }

    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), behaviour);
    }

    /// Requests seen on `path` so far.
    pub fn hits(&self, path: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    pub fn hit_count(&self, path: &str) -> usize {
        self.hits(path).len()
    }

    pub fn all_seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn etag_of(body: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:x}\"", hasher.finish())
}

/// How many requests for `path` the backend has seen (this one included).
fn requests_seen(state: &Mutex<BackendState>, path: &str) -> usize {
    state
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| s.path == path)
        .count()
}

async fn handle(state: Arc<Mutex<BackendState>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let behaviour = {
        let mut state = state.lock().unwrap();
        state.seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        state.routes.get(&path).cloned()
    };
    if path.starts_with("/echo") {
        let mut response = Response::builder()
            .status(201)
            .header("X-Echo-Method", parts.method.as_str())
            .header("X-Echo-Path", path.as_str())
            .header("Content-Type", "application/octet-stream");
        if let Some(value) = parts.headers.get("x-test") {
            response = response.header("X-Echo-Test", value);
        }
        return response.body(Full::new(body)).unwrap();
    }
    match behaviour {
        Some(Behaviour::Json(text)) => {
            let etag = etag_of(&text);
            let matches = parts
                .headers
                .get("if-none-match")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == etag);
            let builder = Response::builder().header("ETag", etag.as_str());
            if matches {
                builder.status(304).body(Full::new(Bytes::new())).unwrap()
            } else {
                builder
                    .status(200)
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap()
            }
        }
        Some(Behaviour::Plain(content_type, text)) => Response::builder()
            .status(200)
            .header("Content-Type", content_type)
            .body(Full::new(Bytes::from(text)))
            .unwrap(),
        Some(Behaviour::Status(status)) => Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"backend trouble")))
            .unwrap(),
        Some(Behaviour::EventStream { total, drops }) => {
            let after: u64 = parts
                .headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let end = drops
                .iter()
                .copied()
                .find(|d| *d > after)
                .unwrap_or(total)
                .min(total);
            let mut body = String::from("retry: 50\n\n");
            for n in after + 1..=end {
                body.push_str(&format!("id: {n}\ndata: {{\"n\":{n}}}\n\n"));
            }
            Response::builder()
                .status(200)
                .header("Content-Type", "text/event-stream")
                .header("Connection", "close")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
        Some(Behaviour::JsonMaxAge(text, seconds)) => Response::builder()
            .status(200)
            .header("Content-Type", "application/json")
            .header("Cache-Control", format!("max-age={seconds}"))
            .body(Full::new(Bytes::from(text)))
            .unwrap(),
        Some(Behaviour::Counter) => {
            let n = requests_seen(&state, &path);
            Response::builder()
                .status(200)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
                .unwrap()
        }
        Some(Behaviour::Stamped(text)) => {
            let n = requests_seen(&state, &path);
            let mut object: serde_json::Value = serde_json::from_str(&text).unwrap();
            object["updated_at"] = serde_json::json!(n);
            Response::builder()
                .status(200)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(object.to_string())))
                .unwrap()
        }
        Some(Behaviour::EchoHeader(name)) => {
            let value = parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Response::builder()
                .status(200)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"{name}\":{value:?}}}"))))
                .unwrap()
        }
        Some(Behaviour::Delayed(ms, content_type, text)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::builder()
                .status(200)
                .header("Content-Type", content_type)
                .body(Full::new(Bytes::from(text)))
                .unwrap()
        }
        Some(Behaviour::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Full::new(Bytes::new()))
        }
        None => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"no such thing")))
            .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// The sidecar under test
// ---------------------------------------------------------------------------------------

/// One graceful stop request per `true` on the watch, like one SIGTERM: a second `recv`
/// waits for a second signal that never comes.
struct WatchShutdown(watch::Receiver<bool>, std::sync::atomic::AtomicBool);

#[async_trait]
impl ShutdownSignalWatch for WatchShutdown {
    async fn recv(&self) -> ShutdownSignal {
        if self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// A running sidecar. Dropping it shuts it down and waits (bounded) for it to stop.
pub struct TestSidecar {
    pub port: u16,
    pub admin_port: u16,
    pub registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl TestSidecar {
    /// Starts a sidecar in front of `backend_port` with `topics` (TOML `[[topic]]` tables)
    /// and `[defaults]` lines.
    pub async fn start(backend_port: u16, defaults: &str, topics: &str) -> TestSidecar {
        Self::start_with_upstream(backend_port, "", defaults, topics).await
    }

    /// Like [`TestSidecar::start`], with extra `[upstream]` lines (they come last, so they
    /// may not repeat the harness's own keys).
    pub async fn start_with_upstream(
        backend_port: u16,
        upstream: &str,
        defaults: &str,
        topics: &str,
    ) -> TestSidecar {
        Self::start_with_server(backend_port, "", upstream, defaults, topics).await
    }

    /// Like [`TestSidecar::start_with_upstream`], with extra `[server]` lines too.
    pub async fn start_with_server(
        backend_port: u16,
        server: &str,
        upstream: &str,
        defaults: &str,
        topics: &str,
    ) -> TestSidecar {
        let port = free_port();
        let admin_port = free_port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             publish_token = \"{PUBLISH_TOKEN}\"\ndrain_timeout_ms = 3000\nthreads = 2\n{server}\n\n\
             [upstream]\nbase_url = \"http://127.0.0.1:{backend_port}\"\ntimeout_ms = 500\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 800\ncircuit_open_ms = 200\n{upstream}\n\n\
             [defaults]\n{defaults}\n\n{topics}\n"
        );
        let config = sidestream::config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let app = sidestream::app::App::build(config).expect("app builds");
        let registry = app.registry();
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            app.run(Box::new(WatchShutdown(
                stop_rx,
                std::sync::atomic::AtomicBool::new(false),
            )));
            let _ = done_tx.send(());
        });
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "sidecar did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while TcpStream::connect(("127.0.0.1", admin_port)).await.is_err() {
            assert!(Instant::now() < deadline, "admin did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestSidecar {
            port,
            admin_port,
            registry,
            stop,
            done: Some(done),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Signals shutdown and waits for `run` to return.
    pub fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(done) = self.done.take() {
            done.recv_timeout(WAIT).expect("sidecar stops within the bound");
        }
    }
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(WAIT);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(port: u16, request: Request<Full<Bytes>>) -> Response<Incoming> {
    send_with_buffer(port, request, None, None).await
}

/// `receive_buffer`: a small kernel receive buffer makes a client that stops reading stall
/// the server's writes quickly (loopback buffers are otherwise megabytes).
async fn send_with_buffer(
    port: u16,
    request: Request<Full<Bytes>>,
    receive_buffer: Option<u32>,
    source: Option<&str>,
) -> Response<Incoming> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(source) = source {
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    }
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response headers within the bound")
        .unwrap()
}

/// One request; the whole body is read (bounded).
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", format!("127.0.0.1:{port}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = send(
        port,
        builder.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within the bound")
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(port, "GET", path, headers, "").await
}

/// One SSE event (or a comment-only block).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

pub struct SseClient {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buffer: BytesMut,
    pub ended: bool,
}

impl SseClient {
    pub async fn connect(port: u16, path: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::connect_with_buffer(port, path, headers, None, None).await
    }

    /// A client from another loopback address (`127.0.0.2`, ...), for per-IP limits.
    pub async fn connect_from(source: &str, port: u16, path: &str) -> SseClient {
        Self::connect_with_buffer(port, path, &[], None, Some(source)).await
    }

    /// A client whose kernel receive buffer is tiny: when it stops reading, the server feels it.
    pub async fn connect_slow(port: u16, path: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::connect_with_buffer(port, path, headers, Some(2048), None).await
    }

    async fn connect_with_buffer(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        receive_buffer: Option<u32>,
        source: Option<&str>,
    ) -> SseClient {
        let mut builder = Request::builder()
            .uri(path)
            .header("Host", format!("127.0.0.1:{port}"))
            .header("Accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = send_with_buffer(
            port,
            builder.body(Full::new(Bytes::new())).unwrap(),
            receive_buffer,
            source,
        )
        .await;
        let (parts, body) = response.into_parts();
        SseClient {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: BytesMut::new(),
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next block (event, comment or retry), or `None` if the stream ended.
    pub async fn next_block(&mut self) -> Option<SseEvent> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = find_block_end(&self.buffer) {
                let block = self.buffer.split_to(end.0);
                let _ = self.buffer.split_to(end.1);
                return Some(parse_block(&block));
            }
            if self.ended {
                return None;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("SSE data within the bound");
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                _ => self.ended = true,
            }
        }
    }

    /// The next real event (with data), skipping comments and retry-only blocks.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.next_block().await?;
            if block.data.is_some() {
                return Some(block);
            }
        }
    }
}

fn find_block_end(buffer: &[u8]) -> Option<(usize, usize)> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2))
}

fn parse_block(block: &[u8]) -> SseEvent {
    let text = String::from_utf8_lossy(block);
    let mut event = SseEvent::default();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            event.comments.push(comment.trim().to_string());
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => event.id = Some(value.to_string()),
            "event" => event.event = Some(value.to_string()),
            "retry" => event.retry = value.parse().ok(),
            "data" => {
                event.data = Some(match event.data.take() {
                    Some(previous) => format!("{previous}\n{value}"),
                    None => value.to_string(),
                })
            }
            _ => {}
        }
    }
    event
}

/// Parses Prometheus text (failing the test when it is not valid).
pub fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text format")
}

/// The sum of a metric's samples whose labels include `labels`.
pub fn metric_value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// [`metric_value`] read from the admin listener.
pub async fn metric(admin_port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = get(admin_port, "/metrics", &[]).await.text();
    metric_value(&scrape(&body), name, labels)
}

/// Starts the real binary on `config_text` (written to a temporary file, whose path is
/// returned for removal) with `RUST_LOG=rust_log`, and waits until it listens on `port`.
pub async fn spawn_sidestream(
    port: u16,
    config_text: &str,
    rust_log: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let config = std::env::temp_dir().join(format!("sidestream-test-{}-{port}.toml", std::process::id()));
    std::fs::write(&config, config_text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sidestream"))
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    (child, config)
}
