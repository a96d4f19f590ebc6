//! A topic with `auth` cannot be read without it through any spelling of its path, nor
//! through the pass-through to its backend paths (source, inbound, auth callback). The
//! backend here is the worst case: it answers the protected data for any path it is sent, as
//! one that normalizes paths (decodes, resolves dots, ignores case) would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::raw::raw_request;
use common::TestSidecar;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::net::TcpListener;

const SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
const PROTECTED: &str = "PROTECTED-7f3a";

/// Answers `{"secret": PROTECTED}` to everything; records each request target.
struct PermissiveBackend {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl PermissiveBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                            let target = request
                                .uri()
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .to_string();
                            record.lock().unwrap().push(target);
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header("Content-Type", "application/json")
                                        .body(Full::new(Bytes::from(format!(
                                            "{{\"secret\":\"{PROTECTED}\"}}"
                                        ))))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PermissiveBackend { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

struct SecretFile(std::path::PathBuf);

impl SecretFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("sidestream-bypass-{}-{}", std::process::id(), now()));
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        SecretFile(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A topic answers `503` until its first upstream result: ask again (bounded) until then.
async fn get_ready(port: u16, target: &str, headers: &[(&str, &str)]) -> common::raw::RawReply {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let reply = raw_request(port, "GET", target, headers).await;
        if reply.status != 503 || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(topics: &[&str]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 600, "topics": topics}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The "overlay": the topic's path is its source URL. A second topic has its source, its
/// inbound URL and its auth callback elsewhere on the backend.
fn topics(secret: &SecretFile) -> String {
    format!(
        r#"
[[topic]]
name = "prices"
path = "/api/prices/{{symbol}}"
source.poll = {{ url = "/api/prices/{{symbol}}", interval_ms = 50 }}
auth = "users"

[[topic]]
name = "rooms"
path = "/rooms/{{room}}"
source.poll = {{ url = "/backend/rooms/{{room}}/feed?depth=1", interval_ms = 50 }}
websocket = {{ inbound = "/backend/rooms/{{room}}/say" }}
auth = "gate"

[[topic]]
name = "public"
path = "/public/{{id}}"
source.poll = {{ url = "/backend/public/{{id}}", interval_ms = 50 }}

[auth.users.jwt]
algorithms = ["HS256"]
secret = {{ file = "{}" }}
topics_claim = "topics"
leeway_ms = 0

[auth.gate.callback]
url = "/auth/check?from=sidestream"
"#,
        secret.0.display()
    )
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_reads_it_without_auth() {
    let backend = PermissiveBackend::start().await;
    let secret = SecretFile::new();
    let sidecar = TestSidecar::start(backend.port, "", &topics(&secret)).await;
    let port = sidecar.port;

    let spellings = [
        // The topic path and its source URL (the same here).
        "/api/prices/AAPL",
        "/api/prices/AAPL?transport=short_poll",
        "/api/prices/AAPL;v=1",
        "http://127.0.0.1/api/prices/AAPL",
        // Percent-encoded letters, in both cases and mixed.
        "/api/%70rices/AAPL",
        "/api/%70%72%69%63%65%73/%41%41%50%4C",
        "/api/%70%72%69%63%65%73/%41%41%50%4c",
        "/%61pi/prices/AAPL",
        "/api/%50rices/AAPL",
        // Case: a case-insensitive backend reads these as the source.
        "/API/PRICES/AAPL",
        "/Api/Prices/AAPL",
        // Empty segments and the trailing slash.
        "/api/prices/AAPL/",
        "/api//prices/AAPL",
        "//api/prices/AAPL",
        "/api/prices//AAPL//",
        // Dot segments, plain and encoded.
        "/api/./prices/AAPL",
        "/api/x/../prices/AAPL",
        "/api/prices/AAPL/.",
        "/api/prices/x/..%2FAAPL",
        "/api/%2e/prices/AAPL",
        "/api/%2E%2e/api/prices/AAPL",
        "/x/.%2E/api/prices/AAPL",
        // Encoded separators.
        "/api%2Fprices%2FAAPL",
        "/api%2fprices/AAPL",
        "/api/prices%2FAAPL",
        "/api%5Cprices%5cAAPL",
        "/api\\prices\\AAPL",
        // NUL, control characters, broken escapes, invalid UTF-8, double encoding.
        "/api/prices/AAPL%00",
        "/api/prices%00/AAPL",
        "/api/prices/AAPL%0d%0a",
        "/api/prices/%",
        "/api/prices/%FF",
        "/api%252Fprices/AAPL",
        "/api/%252e%252e/prices/AAPL",
        // Servlet path parameters.
        "/api/prices;jsessionid=1/AAPL",
        "/api;x/prices;y/AAPL",
        // The second topic's backend paths: source, inbound, callback (its topic path asks
        // the callback, which this backend allows).
        "/backend/rooms/lobby/feed",
        "/backend/rooms/lobby/feed?depth=1",
        "/backend/rooms/lobby/feed/?depth=2",
        "/backend/rooms/%6Cobby/feed",
        "/BACKEND/rooms/lobby/feed",
        "/backend/rooms/lobby/say",
        "/auth/check",
        "/auth/check?from=sidestream",
        "/auth//check/",
    ];
    for spelling in spellings {
        for (method, headers) in [
            ("GET", vec![]),
            ("GET", vec![("Accept", "text/event-stream")]),
            ("GET", vec![("Prefer", "wait=1")]),
            ("HEAD", vec![]),
        ] {
            let reply = raw_request(port, method, spelling, &headers).await;
            assert!(
                [400, 401, 403].contains(&reply.status),
                "{method} {spelling} {headers:?}: {} {}",
                reply.head,
                reply.body
            );
            assert!(
                !reply.body.contains(PROTECTED),
                "{method} {spelling} {headers:?} leaked: {}",
                reply.body
            );
        }
    }

    // The backend answers everything else: the pass-through works, and so does the topic
    // with a token, through any accepted spelling of its path.
    let other = raw_request(port, "GET", "/api/other", &[]).await;
    assert_eq!(other.status, 200, "{}", other.head);
    let public = raw_request(port, "GET", "/backend/public/1", &[]).await;
    assert_eq!(
        public.status, 200,
        "an unprotected topic's source stays reachable"
    );
    let bearer = format!("Bearer {}", token(&["prices/AAPL"]));
    for spelling in ["/api/prices/AAPL", "/api/%70rices/%41APL/", "/api//prices/AAPL"] {
        let reply = get_ready(port, spelling, &[("Authorization", &bearer)]).await;
        assert_eq!(reply.status, 200, "{spelling}: {} {}", reply.head, reply.body);
        assert!(reply.body.contains(PROTECTED), "{spelling}: {}", reply.body);
    }
    // One instance for every spelling: the backend was asked for one URL of that topic.
    let price_urls: Vec<String> = backend
        .seen()
        .into_iter()
        .filter(|target| target.to_ascii_lowercase().contains("prices"))
        .collect();
    assert!(!price_urls.is_empty());
    assert!(
        price_urls.iter().all(|target| target == "/api/prices/AAPL"),
        "{price_urls:?}"
    );
}

#[tokio::test]
async fn topics_claim_globs_match_the_decoded_instance() {
    let backend = PermissiveBackend::start().await;
    let secret = SecretFile::new();
    let sidecar = TestSidecar::start(backend.port, "", &topics(&secret)).await;
    let port = sidecar.port;
    let bearer = format!("Bearer {}", token(&["prices/A*"]));
    let auth = [("Authorization", bearer.as_str())];

    // `A*` covers `AAPL` however it is spelled: the glob sees the decoded value.
    let reply = get_ready(port, "/api/prices/%41APL", &auth).await;
    assert_eq!(reply.status, 200, "{} {}", reply.head, reply.body);
    // An encoded traversal never reaches the glob (`A%2F..%2FMSFT` would match `A*` raw).
    for spelling in [
        "/api/prices/A%2F..%2FMSFT",
        "/api/prices/A%2f..%2fMSFT",
        "/api/prices/A%252F..%252FMSFT",
    ] {
        let reply = raw_request(port, "GET", spelling, &auth).await;
        assert_eq!(reply.status, 400, "{spelling}: {} {}", reply.head, reply.body);
        assert!(!reply.body.contains(PROTECTED));
    }
    // A value that decodes to something outside the grant is refused by the glob.
    let reply = raw_request(port, "GET", "/api/prices/%4DSFT", &auth).await;
    assert_eq!(reply.status, 403, "{} {}", reply.head, reply.body);
}

/// Only `Upgrade: websocket` selects WebSocket; another upgrade is served as if none was
/// asked for (here: a short poll, behind the topic's auth like any other).
#[tokio::test]
async fn an_upgrade_to_another_protocol_is_not_a_websocket() {
    let backend = PermissiveBackend::start().await;
    let secret = SecretFile::new();
    let sidecar = TestSidecar::start(backend.port, "", &topics(&secret)).await;
    let port = sidecar.port;
    let bearer = format!("Bearer {}", token(&["prices/*"]));
    for upgrade in ["h2c", "TLS/1.2, h2c", "websocketx"] {
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Upgrade", upgrade),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ];
        let reply = get_ready(port, "/api/prices/AAPL", &headers).await;
        assert_eq!(reply.status, 200, "{upgrade}: {} {}", reply.head, reply.body);
        assert!(reply.body.contains(PROTECTED), "{upgrade}: {}", reply.body);
    }
    // `websocket` is found in a list and in any case; without the handshake headers that is
    // the WebSocket transport's own `400`, not a short poll.
    let headers = [("Authorization", bearer.as_str()), ("Upgrade", "h2c, WebSocket")];
    let reply = raw_request(port, "GET", "/api/prices/AAPL", &headers).await;
    assert_eq!(reply.status, 400, "{} {}", reply.head, reply.body);
}
