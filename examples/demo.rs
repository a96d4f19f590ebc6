//! The README's first command: a demo backend plus sidestream in front of it.
//!
//! `cargo run --release --example demo` starts, on loopback only:
//! - a plain request/response backend on 127.0.0.1:3000 (prices per symbol that change every
//!   second, with ETags; a latest-trade resource; a browser page);
//! - sidestream on 127.0.0.1:8080 with the embedded `config/demo.toml`.
//!
//! Then open <http://127.0.0.1:8080/> (the page comes from the backend, through sidestream's
//! pass-through) or `curl -N http://127.0.0.1:8080/api/prices/AAPL`.
//!
//! `cargo run --release --example demo -- --cluster` runs the same backend with three
//! sidestream instances (8080/8081/8082, admin 9090/9091/9092) sharing a `redis-server` it
//! starts itself (see `demo/cluster.rs`). `GET /stats` on the backend counts its requests.

#[path = "demo/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const PAGE: &str = include_str!("demo_page.html");
const LONG_POLL_CLIENT: &str = include_str!("long_poll_client.js");
const WEBSOCKET_CLIENT: &str = include_str!("websocket_client.js");
const SSE_CLIENT: &str = include_str!("sse_client.js");
const JSON_PATCH: &str = include_str!("json_patch.js");
const BACKEND: &str = "127.0.0.1:3000";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["--cluster"] => {
            start_backend()?;
            return cluster::run(BACKEND);
        }
        // How `--cluster` starts each of its instances (one App per process).
        ["--cluster-instance", index, "--redis-url", redis_url] => {
            return cluster::run_instance(DEMO_CONFIG, index.parse()?, redis_url);
        }
        _ => return Err("usage: demo [--cluster]".into()),
    }
    let config =
        sidestream::config::parse("config/demo.toml (embedded)", DEMO_CONFIG).map_err(|e| e.to_string())?;
    start_backend()?;

    let listen = config.server.listen;
    println!(
        "\nsidestream demo\n  backend    http://{BACKEND}  (plain request/response)\n  sidestream http://{listen}\n\n\
         try:\n  curl -N -H 'Accept: text/event-stream' http://{listen}/api/prices/AAPL   # SSE, one event per change\n  \
         curl -N 'http://{listen}/api/trades?transport=sse'                   # SSE, event topic\n  \
         curl -N -H 'Last-Event-ID: <id>' 'http://{listen}/api/trades?transport=sse'   # resume\n  \
         curl -i http://{listen}/api/prices/AAPL            # short poll: latest state + ETag\n  \
         curl -i 'http://{listen}/api/prices/AAPL?wait=10'  # long poll\n  \
         curl -i http://{listen}/orders -d '{{\"buy\":1}}'      # pass-through to the backend\n  \
         cargo run --example client -- --transport websocket ws://{listen}/api/trades   # WebSocket\n  \
         open http://{listen}/                              # live page (EventSource)\n  \
         curl -s http://{BACKEND}/stats                    # what the backend served, per path\n\nCtrl-C stops.\n"
    );
    let app = sidestream::app::App::build(config)?;
    app.run(Box::new(sidestream::app::UnixSignals));
    Ok(())
}

/// The demo backend on its own thread and runtime, as if it were another process.
fn start_backend() -> Result<(), Box<dyn std::error::Error>> {
    let backend = std::net::TcpListener::bind(BACKEND)
        .map_err(|error| format!("the demo backend cannot listen on {BACKEND}: {error}"))?;
    backend.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match runtime {
            Ok(runtime) => runtime.block_on(serve_backend(backend)),
            Err(error) => eprintln!("demo backend cannot start: {error}"),
        }
    });
    Ok(())
}

/// Requests per path, for `GET /stats`: shows how often sidestream polls. Per path the total
/// and the times of the last ones (at most `RECENT_MAX`, oldest dropped first).
static HITS: LazyLock<Mutex<BTreeMap<String, Hits>>> = LazyLock::new(Mutex::default);
const RECENT_WINDOW: Duration = Duration::from_secs(10);
const RECENT_MAX: usize = 10_000;

#[derive(Default, Clone)]
struct Hits {
    total: u64,
    recent: VecDeque<Instant>,
}

fn count_hit(path: &str) {
    let now = Instant::now();
    if let Ok(mut hits) = HITS.lock() {
        let hits = hits.entry(path.to_string()).or_default();
        hits.total += 1;
        if hits.recent.len() >= RECENT_MAX {
            hits.recent.pop_front();
        }
        hits.recent.push_back(now);
    }
}

/// `{"/prices/AAPL":{"total":…,"last_10s":…},…}`
fn stats() -> String {
    let now = Instant::now();
    let hits = HITS.lock().map(|hits| hits.clone()).unwrap_or_default();
    let requests: serde_json::Map<String, serde_json::Value> = hits
        .into_iter()
        .map(|(path, hits)| {
            let recent = hits
                .recent
                .iter()
                .filter(|at| now.duration_since(**at) <= RECENT_WINDOW)
                .count();
            (
                path,
                serde_json::json!({ "total": hits.total, "last_10s": recent }),
            )
        })
        .collect();
    format!("{}\n", serde_json::Value::Object(requests))
}

async fn serve_backend(listener: std::net::TcpListener) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        eprintln!("demo backend: cannot use the listener");
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|request| async move { Ok::<_, Infallible>(route(request)) });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn noise(seed: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    hasher.finish()
}

fn respond(status: u16, content_type: &str, etag: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", content_type);
    if let Some(etag) = etag {
        builder = builder.header("ETag", etag);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Rows of the demo's `/board` resource.
const BOARD_ROWS: u64 = 300;

/// The backend knows nothing of push: every resource is a plain GET with an ETag.
fn route(request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if path == "/stats" {
        return respond(200, "application/json", None, stats());
    }
    count_hit(&path);
    let if_none_match = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let conditional = |etag: String, body: String| {
        if if_none_match.as_deref() == Some(etag.as_str()) {
            respond(304, "application/json", Some(&etag), String::new())
        } else {
            respond(200, "application/json", Some(&etag), body)
        }
    };
    if let Some(symbol) = path.strip_prefix("/prices/") {
        // A new price every second per symbol, stable within the second.
        let tick = now_millis() / 1000;
        let cents = 10_000 + noise((symbol, tick)) % 5_000;
        let body = format!(
            "{{\"symbol\":\"{symbol}\",\"price\":{}.{:02},\"tick\":{tick}}}",
            cents / 100,
            cents % 100
        );
        return conditional(format!("\"{symbol}-{tick}\""), body);
    }
    match path.as_str() {
        "/trades/latest" => {
            let trade = now_millis() / 700;
            let side = if noise(trade) % 2 == 0 { "buy" } else { "sell" };
            let body = format!(
                "{{\"trade\":{trade},\"side\":\"{side}\",\"qty\":{}}}",
                1 + noise(trade) % 100
            );
            conditional(format!("\"t{trade}\""), body)
        }
        // 300 rows, one of which changes every second; `generated_at` changes on every
        // response (the topic's `ignore_fields`), and there is no ETag: only sidestream's
        // change detection tells a real change from a new timestamp.
        "/board" => {
            let tick = u64::try_from(now_millis() / 1000).unwrap_or(0);
            let rows: Vec<serde_json::Value> = (0..BOARD_ROWS)
                .map(|n| {
                    // The last second at which this row was the one that changed.
                    let changed = tick - (tick + BOARD_ROWS - n) % BOARD_ROWS;
                    serde_json::json!({"id": n, "name": format!("row {n}"), "value": noise((n, changed)) % 1000})
                })
                .collect();
            let body = serde_json::json!({"generated_at": now_millis() as u64, "rows": rows});
            respond(200, "application/json", None, body.to_string())
        }
        "/orders" => respond(201, "application/json", None, "{\"accepted\":true}".into()),
        "/" | "/index.html" => respond(200, "text/html; charset=utf-8", None, PAGE.into()),
        "/long_poll_client.js" => respond(200, "text/javascript", None, LONG_POLL_CLIENT.into()),
        "/websocket_client.js" => respond(200, "text/javascript", None, WEBSOCKET_CLIENT.into()),
        "/sse_client.js" => respond(200, "text/javascript", None, SSE_CLIENT.into()),
        "/json_patch.js" => respond(200, "text/javascript", None, JSON_PATCH.into()),
        _ => respond(404, "text/plain", None, "not found\n".into()),
    }
}
