//! Subscriber auth: JWT (HS256 from a secret file, ES256 from a JWKS on the backend) and the
//! auth callback, on every transport, refused before anything is subscribed or upgraded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ws::WsClient;
use common::{get, metric, Behaviour, SseClient, TestBackend, TestSidecar};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn secret_file() -> tempfile_path::TempPath {
    tempfile_path::write(&format!("{SECRET}\n"))
}

/// A file holding a secret, removed on drop (no extra crate for one file).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub fn write(contents: &str) -> TempPath {
        let path = std::env::temp_dir().join(format!(
            "sidestream-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&path, contents).unwrap();
        TempPath(path)
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }
}

fn jwt_topics(secret_path: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[[topic]]
name = "prices"
path = "/prices/{{symbol}}"
source.poll = {{ url = "/backend/prices/{{symbol}}", interval_ms = 50 }}
auth = "users"

[auth.users.jwt]
algorithms = ["HS256"]
secret = {{ file = "{}" }}
cookie = "session"
topics_claim = "topics"
leeway_ms = 0
{extra}
"#,
        secret_path.display()
    )
}

#[tokio::test]
async fn jwt_rejections_are_401_and_403_with_reasons() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    let secret = secret_file();
    let sidecar = TestSidecar::start(backend.port, "", &jwt_topics(&secret.0, "")).await;
    let port = sidecar.port;

    let missing = get(port, "/prices/AAPL", &[]).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert!(missing.text().contains("token is required"), "{}", missing.text());
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"sidestream\"")
    );

    let expired = hs256(SECRET, json!({"exp": now() - 3600, "topics": ["prices/*"]}));
    let reply = get(
        port,
        "/prices/AAPL",
        &[("Authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("expired"), "{}", reply.text());

    let forged = hs256(
        "another-secret-0123456789abcdef0123456789",
        json!({"exp": now() + 600, "topics": ["prices/*"]}),
    );
    let reply = get(
        port,
        "/prices/AAPL",
        &[("Authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("signature"), "{}", reply.text());

    let garbage = get(port, "/prices/AAPL", &[("Authorization", "Bearer not.a.jwt")]).await;
    assert_eq!(garbage.status, 401);

    let elsewhere = hs256(
        SECRET,
        json!({"exp": now() + 600, "topics": ["news/*", "prices/MSFT"]}),
    );
    let reply = get(
        port,
        "/prices/AAPL",
        &[("Authorization", &format!("Bearer {elsewhere}"))],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("prices/AAPL"), "{}", reply.text());

    // SSE gets the same answers: a 4xx for auth is final, as it should be.
    let sse = get(port, "/prices/AAPL", &[("Accept", "text/event-stream")]).await;
    assert_eq!(sse.status, 401);
    let sse = get(
        port,
        &format!("/prices/AAPL?access_token={elsewhere}"),
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(sse.status, 403);

    // Nothing was subscribed for the refused requests: no instance exists.
    assert_eq!(sidecar.registry.len(), 0);
    assert!(
        metric(
            sidecar.admin_port,
            "sidestream_auth_decisions_total",
            &[("outcome", "unauthenticated")]
        )
        .await
            >= 5.0
    );
    assert!(
        metric(
            sidecar.admin_port,
            "sidestream_auth_decisions_total",
            &[("outcome", "forbidden")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn jwt_allowed_on_every_transport_and_token_places() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    let secret = secret_file();
    let sidecar = TestSidecar::start(backend.port, "", &jwt_topics(&secret.0, "")).await;
    let port = sidecar.port;
    let token = hs256(SECRET, json!({"exp": now() + 600, "topics": ["prices/*"]}));
    let bearer = format!("Bearer {token}");

    // Short poll: allowed (503 until the first upstream result, then the body).
    let mut status = 0;
    for _ in 0..100 {
        let reply = get(port, "/prices/AAPL", &[("Authorization", &bearer)]).await;
        status = reply.status.as_u16();
        if status == 200 {
            assert_eq!(reply.text(), "{\"p\":1}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);

    // SSE with the query parameter (EventSource cannot set headers), and with the cookie.
    let mut sse = SseClient::connect(port, &format!("/prices/AAPL?access_token={token}"), &[]).await;
    assert_eq!(sse.status, 200);
    let event = sse.next_event().await.expect("an event");
    assert_eq!(event.data.as_deref(), Some("{\"p\":1}"));
    let cookie = format!("theme=dark; session={token}");
    let mut sse = SseClient::connect(port, "/prices/AAPL", &[("Cookie", &cookie)]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_event().await.is_some());

    // Long poll.
    let reply = get(
        port,
        "/prices/AAPL?transport=long_poll&cursor=aaaaaaa-0",
        &[("Authorization", &bearer)],
    )
    .await;
    assert!(reply.status == 200 || reply.status == 304, "{}", reply.status);

    // WebSocket: allowed with a token, refused before the upgrade without one or with a bad one.
    let ws = WsClient::connect(port, &format!("/prices/AAPL?access_token={token}"), None, &[]).await;
    assert_eq!(ws.status, 101);
    let ws = WsClient::connect(port, "/prices/AAPL", None, &[]).await;
    assert_eq!(ws.status, 401, "{}", ws.response);
    let ws = WsClient::connect(port, "/prices/AAPL?access_token=bad", None, &[]).await;
    assert_eq!(ws.status, 401, "{}", ws.response);
}

#[tokio::test]
async fn streams_end_when_the_token_expires() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    let secret = secret_file();
    let sidecar = TestSidecar::start(backend.port, "", &jwt_topics(&secret.0, "")).await;
    let port = sidecar.port;
    let short_lived = hs256(SECRET, json!({"exp": now() + 2, "topics": ["**"]}));

    let mut sse = SseClient::connect(port, &format!("/prices/AAPL?access_token={short_lived}"), &[]).await;
    assert_eq!(sse.status, 200);
    let mut ws = WsClient::connect(
        port,
        &format!("/prices/AAPL?access_token={short_lived}"),
        None,
        &[],
    )
    .await;
    assert_eq!(ws.status, 101);

    // The SSE stream ends (bounded: next_block gives up after the harness's wait).
    let mut ended = false;
    for _ in 0..50 {
        match sse.next_block().await {
            None => {
                ended = true;
                break;
            }
            Some(_) => continue,
        }
    }
    assert!(ended, "the SSE stream ended when the token expired");
    assert_eq!(ws.read_until_close().await, Some(1008));
    assert!(
        metric(
            sidecar.admin_port,
            "sidestream_auth_decisions_total",
            &[("outcome", "expired")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn es256_keys_come_from_a_jwks_on_the_backend() {
    let backend = TestBackend::start().await;
    backend.set("/backend/news", Behaviour::Json("{\"n\":1}".into()));
    let jwks = std::fs::read_to_string("tests/fixtures/auth/jwks.json").unwrap();
    backend.set("/keys", Behaviour::Plain("application/json", jwks));
    let topics = r#"
[[topic]]
name = "news"
path = "/news"
source.poll = { url = "/backend/news", interval_ms = 50 }
auth = "issuer"

[auth.issuer.jwt]
algorithms = ["ES256"]
jwks_url = "/keys"
audience = "sidestream-tests"
"#;
    let sidecar = TestSidecar::start(backend.port, "", topics).await;
    let key =
        EncodingKey::from_ec_pem(&std::fs::read("tests/fixtures/auth/es256-private.pem").unwrap()).unwrap();
    let sign = |kid: &str, audience: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        encode(&header, &json!({"exp": now() + 600, "aud": audience}), &key).unwrap()
    };

    let good = sign("test-key-1", "sidestream-tests");
    let mut sse = SseClient::connect(sidecar.port, &format!("/news?access_token={good}"), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.next_event().await.expect("an event").data.as_deref(),
        Some("{\"n\":1}")
    );

    let unknown = sign("rotated-away", "sidestream-tests");
    let reply = get(
        sidecar.port,
        "/news",
        &[("Authorization", &format!("Bearer {unknown}"))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("unknown key"), "{}", reply.text());

    let wrong_audience = sign("test-key-1", "someone-else");
    let reply = get(
        sidecar.port,
        "/news",
        &[("Authorization", &format!("Bearer {wrong_audience}"))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("audience"), "{}", reply.text());
    // One JWKS fetch served all of it (the unknown kid may add one re-fetch).
    assert!(
        backend.hit_count("/keys") <= 2,
        "{} JWKS fetches",
        backend.hit_count("/keys")
    );
}

const CALLBACK_TOPICS: &str = r#"
[[topic]]
name = "orders"
path = "/orders/{account}"
source.poll = { url = "/backend/orders/{account}", interval_ms = 50 }
auth = "backend"

[[topic]]
name = "vault"
path = "/vault"
source.poll = { url = "/backend/vault", interval_ms = 50 }
auth = "closed"

[auth.backend.callback]
url = "/auth/allow"
forward_headers = ["authorization"]
cache_ms = 60000

[auth.closed.callback]
url = "/auth/deny"
"#;

#[tokio::test]
async fn callback_decisions_are_cached_per_identity_and_instance() {
    let backend = TestBackend::start().await;
    backend.set("/backend/orders/7", Behaviour::Json("{\"o\":7}".into()));
    backend.set("/backend/vault", Behaviour::Json("{}".into()));
    backend.set("/auth/allow", Behaviour::Status(204));
    backend.set("/auth/deny", Behaviour::Status(403));
    let sidecar = TestSidecar::start(backend.port, "", CALLBACK_TOPICS).await;
    let port = sidecar.port;

    for _ in 0..100 {
        let reply = get(
            port,
            "/orders/7?transport=long_poll&cursor=aaaaaaa-0",
            &[("Authorization", "Bearer alice")],
        )
        .await;
        assert!(
            reply.status == 200 || reply.status == 304,
            "{} {}",
            reply.status,
            reply.text()
        );
    }
    assert_eq!(
        backend.hit_count("/auth/allow"),
        1,
        "100 long polls, one callback"
    );
    let asked = backend.hits("/auth/allow");
    assert_eq!(asked[0].headers.get("authorization").unwrap(), "Bearer alice");
    assert_eq!(asked[0].headers.get("x-sidestream-topic").unwrap(), "orders/7");

    // Another identity is asked about separately.
    let reply = get(port, "/orders/7", &[("Authorization", "Bearer bob")]).await;
    assert_ne!(reply.status, 401);
    assert_eq!(backend.hit_count("/auth/allow"), 2);

    let denied = get(port, "/vault", &[("Authorization", "Bearer alice")]).await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(denied.text().contains("refused"), "{}", denied.text());
    let ws = WsClient::connect(port, "/vault", None, &[]).await;
    assert_eq!(ws.status, 403, "refused before the upgrade");
    assert!(
        metric(
            sidecar.admin_port,
            "sidestream_auth_callback_requests_total",
            &[("policy", "backend")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn an_unreachable_callback_is_transient_for_sse() {
    let backend = TestBackend::start().await;
    backend.set("/backend/orders/7", Behaviour::Json("{\"o\":7}".into()));
    backend.set("/auth/allow", Behaviour::Status(500));
    let sidecar = TestSidecar::start(backend.port, "", CALLBACK_TOPICS).await;

    // SSE: 200 + retry: + end, never a status that stops EventSource for good.
    let mut sse = SseClient::connect(sidecar.port, "/orders/7", &[("Authorization", "Bearer alice")]).await;
    assert_eq!(sse.status, 200);
    let block = sse.next_block().await.expect("a retry hint");
    assert!(block.retry.is_some(), "{block:?}");
    assert!(sse.next_block().await.is_none(), "then the stream ends");
    let reply = get(sidecar.port, "/orders/7", &[("Authorization", "Bearer alice")]).await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    // Failures are not cached: each request asked again.
    assert_eq!(backend.hit_count("/auth/allow"), 2);
}

#[tokio::test]
async fn rs256_and_eddsa_keys_come_from_pem_files() {
    let backend = TestBackend::start().await;
    backend.set("/backend/a", Behaviour::Json("{\"a\":1}".into()));
    backend.set("/backend/b", Behaviour::Json("{\"b\":1}".into()));
    let topics = r#"
[[topic]]
name = "a"
path = "/a"
source.poll = { url = "/backend/a", interval_ms = 50 }
auth = "rsa"

[[topic]]
name = "b"
path = "/b"
source.poll = { url = "/backend/b", interval_ms = 50 }
auth = "edwards"

[auth.rsa.jwt]
algorithms = ["RS256"]
public_key_file = "tests/fixtures/auth/rs256-public.pem"
issuer = "tests"

[auth.edwards.jwt]
algorithms = ["EdDSA"]
public_key_file = "tests/fixtures/auth/ed25519-public.pem"
"#;
    let sidecar = TestSidecar::start(backend.port, "", topics).await;
    let pem = |name: &str| std::fs::read(format!("tests/fixtures/auth/{name}")).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&pem("rs256-private.pem")).unwrap();
    let edwards = EncodingKey::from_ed_pem(&pem("ed25519-private.pem")).unwrap();
    let claims = json!({"exp": now() + 600, "iss": "tests"});
    let rsa_token = encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    let ed_token = encode(&Header::new(Algorithm::EdDSA), &claims, &edwards).unwrap();

    let mut a = SseClient::connect(sidecar.port, &format!("/a?access_token={rsa_token}"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.next_event().await.unwrap().data.as_deref(), Some("{\"a\":1}"));
    let mut b = SseClient::connect(sidecar.port, &format!("/b?access_token={ed_token}"), &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.next_event().await.unwrap().data.as_deref(), Some("{\"b\":1}"));

    // Each policy accepts only its own algorithm and key.
    assert_eq!(
        get(sidecar.port, &format!("/a?access_token={ed_token}"), &[])
            .await
            .status,
        401
    );
    assert_eq!(
        get(sidecar.port, &format!("/b?access_token={rsa_token}"), &[])
            .await
            .status,
        401
    );
    let wrong_issuer = encode(
        &Header::new(Algorithm::RS256),
        &json!({"exp": now() + 600, "iss": "x"}),
        &rsa,
    )
    .unwrap();
    assert_eq!(
        get(sidecar.port, &format!("/a?access_token={wrong_issuer}"), &[])
            .await
            .status,
        401
    );
}

/// Cross-site WebSocket hijacking: a browser adds the user's cookie to a WebSocket opened by
/// any page, so without a `[cors]` allowlist a foreign `Origin` is refused where the token can
/// come from a cookie. Tools that send no `Origin` (and same-origin pages) still connect.
#[tokio::test]
async fn a_foreign_origin_cannot_open_a_websocket_on_cookie_auth() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    backend.set("/backend/orders/7", Behaviour::Json("{\"o\":7}".into()));
    backend.set("/auth/allow", Behaviour::Status(204));
    let secret = secret_file();
    let topics = format!(
        "{}{}",
        jwt_topics(&secret.0, ""),
        r#"
[[topic]]
name = "orders"
path = "/orders/{account}"
source.poll = { url = "/backend/orders/{account}", interval_ms = 50 }
auth = "backend"

[auth.backend.callback]
url = "/auth/allow"
"#
    );
    let sidecar = TestSidecar::start(backend.port, "", &topics).await;
    let port = sidecar.port;
    let token = hs256(SECRET, json!({"exp": now() + 600, "topics": ["prices/*"]}));
    let cookie = format!("session={token}");
    let foreign = ("Origin", "https://evil.example.net");

    let ws = WsClient::connect(port, "/prices/AAPL", None, &[("Cookie", &cookie), foreign]).await;
    assert_eq!(ws.status, 403, "{}", ws.response);
    // The callback forwards `cookie` by default: the same holds there.
    let ws = WsClient::connect(port, "/orders/7", None, &[("Cookie", "sid=alice"), foreign]).await;
    assert_eq!(ws.status, 403, "{}", ws.response);
    assert_eq!(
        backend.hit_count("/auth/allow"),
        0,
        "refused before auth was asked"
    );

    let ws = WsClient::connect(port, "/prices/AAPL", None, &[("Cookie", &cookie)]).await;
    assert_eq!(ws.status, 101, "no Origin: {}", ws.response);
    let same = format!("http://127.0.0.1:{port}");
    let ws = WsClient::connect(
        port,
        "/prices/AAPL",
        None,
        &[("Cookie", &cookie), ("Origin", &same)],
    )
    .await;
    assert_eq!(ws.status, 101, "same origin: {}", ws.response);
    let ws = WsClient::connect(port, "/orders/7", None, &[("Cookie", "sid=alice")]).await;
    assert_eq!(ws.status, 101, "{}", ws.response);
}

/// Dates no clock can hold (`exp` above i64::MAX or 1e20, a negative `nbf`) are a `401`,
/// and the sidecar goes on serving.
#[tokio::test]
async fn out_of_range_token_dates_are_401() {
    let backend = TestBackend::start().await;
    backend.set("/backend/prices/AAPL", Behaviour::Json("{\"p\":1}".into()));
    let secret = secret_file();
    let sidecar = TestSidecar::start(backend.port, "", &jwt_topics(&secret.0, "")).await;
    for claims in [
        json!({"exp": u64::MAX, "topics": ["**"]}),
        json!({"exp": 1e20, "topics": ["**"]}),
        json!({"exp": now() + 600, "nbf": -5, "topics": ["**"]}),
    ] {
        let token = hs256(SECRET, claims.clone());
        let reply = get(
            sidecar.port,
            "/prices/AAPL",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(reply.status, 401, "{claims}: {}", reply.text());
    }
    let good = hs256(SECRET, json!({"exp": now() + 600, "topics": ["**"]}));
    let mut sse = SseClient::connect(sidecar.port, &format!("/prices/AAPL?access_token={good}"), &[]).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_event().await.is_some());
}

/// A JWKS refresh in flight (here a slow one, started by a token with an unknown `kid`)
/// does not hold up tokens whose key is already known.
#[tokio::test]
async fn a_slow_jwks_refresh_does_not_stall_known_keys() {
    let backend = TestBackend::start().await;
    backend.set("/backend/news", Behaviour::Json("{\"n\":1}".into()));
    let jwks = std::fs::read_to_string("tests/fixtures/auth/jwks.json").unwrap();
    backend.set("/keys", Behaviour::Plain("application/json", jwks.clone()));
    let topics = r#"
[[topic]]
name = "news"
path = "/news"
source.poll = { url = "/backend/news", interval_ms = 50 }
auth = "issuer"

[auth.issuer.jwt]
algorithms = ["ES256"]
jwks_url = "/keys"
jwks_refresh_ms = 100
"#;
    let sidecar = TestSidecar::start(backend.port, "", topics).await;
    let key =
        EncodingKey::from_ec_pem(&std::fs::read("tests/fixtures/auth/es256-private.pem").unwrap()).unwrap();
    let sign = |kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        encode(&header, &json!({"exp": now() + 600}), &key).unwrap()
    };
    let good = format!("Bearer {}", sign("test-key-1"));
    let mut status = 0;
    for _ in 0..100 {
        status = get(sidecar.port, "/news", &[("Authorization", &good)])
            .await
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);

    backend.set("/keys", Behaviour::Delayed(5000, "application/json", jwks));
    tokio::time::sleep(Duration::from_millis(150)).await; // the refresh interval is over
    let fetches = backend.hit_count("/keys");
    let port = sidecar.port;
    let random = format!("Bearer {}", sign("random-kid-7"));
    let slow = tokio::spawn(async move { get(port, "/news", &[("Authorization", &random)]).await.status });
    common::eventually("the slow JWKS fetch is in flight", || {
        backend.hit_count("/keys") > fetches
    })
    .await;
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        get(sidecar.port, "/news", &[("Authorization", &good)]),
    )
    .await
    .expect("a known key is verified while the fetch is in flight");
    assert_eq!(reply.status, 200);
    assert!(!slow.is_finished(), "the fetch was still in flight");
    assert_eq!(
        slow.await.unwrap(),
        401,
        "the unknown kid, once the fetch is done"
    );
}

/// A callback grant on a held stream is asked again every `cache_ms`: once the callback
/// refuses, the SSE stream ends and the WebSocket closes with 1008, as for an expired token.
#[tokio::test]
async fn a_revoked_callback_grant_ends_held_streams() {
    let backend = TestBackend::start().await;
    backend.set("/backend/orders/7", Behaviour::Json("{\"o\":7}".into()));
    backend.set("/auth/allow", Behaviour::Status(204));
    let topics = r#"
[[topic]]
name = "orders"
path = "/orders/{account}"
source.poll = { url = "/backend/orders/{account}", interval_ms = 50 }
auth = "backend"

[auth.backend.callback]
url = "/auth/allow"
forward_headers = ["authorization"]
cache_ms = 300
"#;
    let sidecar = TestSidecar::start(backend.port, "", topics).await;
    let alice = [("Authorization", "Bearer alice")];
    let mut sse = SseClient::connect(sidecar.port, "/orders/7", &alice).await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_event().await.is_some());
    let mut ws = WsClient::connect(sidecar.port, "/orders/7", None, &alice).await;
    assert_eq!(ws.status, 101);
    let asked = backend.hit_count("/auth/allow");
    // Still allowed: the streams are re-checked and stay.
    common::eventually("a re-check", || backend.hit_count("/auth/allow") > asked).await;

    backend.set("/auth/allow", Behaviour::Status(403));
    let mut ended = false;
    for _ in 0..100 {
        if sse.next_block().await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the SSE stream ended once the callback refused");
    assert_eq!(ws.read_until_close().await, Some(1008));
    assert!(
        metric(
            sidecar.admin_port,
            "sidestream_auth_decisions_total",
            &[("outcome", "revoked")]
        )
        .await
            >= 2.0
    );
}
