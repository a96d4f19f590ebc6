//! A Rust client for each transport, following one topic with its cursor.
//!
//! ```sh
//! cargo run --example client -- --transport sse        http://127.0.0.1:8080/api/prices/AAPL
//! cargo run --example client -- --transport long_poll  http://127.0.0.1:8080/api/trades
//! cargo run --example client -- --transport short_poll http://127.0.0.1:8080/api/prices/AAPL
//! cargo run --example client -- --transport websocket  http://127.0.0.1:8080/api/trades
//! ```
//!
//! Each prints one line per message (`<cursor> <data>`), resumes from its last cursor after a
//! connection error, and backs off with full jitter (1 s doubling to 30 s) meanwhile.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Transport {
    Sse,
    LongPoll,
    ShortPoll,
    Websocket,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// Stop after this many messages (0 = never).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// The topic URL, e.g. http://127.0.0.1:8080/api/prices/AAPL
    url: hyper::Uri,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut cursor: Option<String> = None;
    let mut seen = 0usize;
    let mut failures = 0u32;
    loop {
        let result = match args.transport {
            Transport::Sse => follow_sse(&args, &mut cursor, &mut seen).await,
            Transport::LongPoll => poll_once(&args, &mut cursor, &mut seen, Some(25)).await,
            Transport::Websocket => follow_websocket(&args, &mut cursor, &mut seen).await,
            Transport::ShortPoll => {
                let result = poll_once(&args, &mut cursor, &mut seen, None).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                result
            }
        };
        if args.count > 0 && seen >= args.count {
            return Ok(());
        }
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                let ceiling = Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                let delay = ceiling.mul_f64(rand::random_range(0.0..1.0));
                eprintln!("error: {error}; retrying in {delay:?} from cursor {cursor:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn send(
    url: &hyper::Uri,
    path: String,
    headers: &[(&str, String)],
) -> Result<Response<Incoming>, Error> {
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .uri(path)
        .header("Host", format!("{host}:{port}"));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    Ok(sender.send_request(request.body(Empty::<Bytes>::new())?).await?)
}

/// SSE: one long response; `Last-Event-ID` on every reconnect.
async fn follow_sse(args: &Args, cursor: &mut Option<String>, seen: &mut usize) -> Result<(), Error> {
    let mut headers = vec![("Accept", "text/event-stream".to_string())];
    if let Some(cursor) = cursor {
        headers.push(("Last-Event-ID", cursor.clone()));
    }
    let response = send(&args.url, args.url.path().to_string(), &headers).await?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()).into());
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            buffer.extend_from_slice(data);
        }
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block = buffer.split_to(end + 2);
            let text = String::from_utf8_lossy(&block);
            let mut data = Vec::new();
            let mut event = None;
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    *cursor = Some(id.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                } else if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_string());
                }
            }
            if !data.is_empty() {
                let name = event.map_or(String::new(), |e| format!("[{e}] "));
                println!("{} {name}{}", cursor.as_deref().unwrap_or("-"), data.join("\n"));
                *seen += 1;
                if args.count > 0 && *seen >= args.count {
                    return Ok(());
                }
            }
        }
    }
    Err("stream ended".into())
}

/// WebSocket (permessage-deflate offered): one message per hub message; with the JSON
/// envelope the cursor is in each message and `?cursor=` resumes after a reconnect.
async fn follow_websocket(args: &Args, cursor: &mut Option<String>, seen: &mut usize) -> Result<(), Error> {
    use futures_util::StreamExt;
    let mut url = url::Url::parse(&args.url.to_string())?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|_| "cannot use this URL for WebSocket")?;
    if let Some(cursor) = cursor.as_deref() {
        url.query_pairs_mut().append_pair("cursor", cursor);
    }
    let options = yawc::Options::default()
        .with_low_latency_compression()
        .with_utf8();
    let mut ws = yawc::WebSocket::connect(url).with_options(options).await?;
    while let Some(frame) = ws.next().await {
        let payload = frame.payload();
        match frame.opcode() {
            yawc::frame::OpCode::Text | yawc::frame::OpCode::Binary => {}
            yawc::frame::OpCode::Close => return Err("the server closed the connection".into()),
            _ => continue,
        }
        let text = String::from_utf8_lossy(payload).into_owned();
        let envelope: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        match envelope.as_ref().and_then(|e| e["id"].as_str()) {
            Some(id) => {
                *cursor = Some(id.to_string());
                println!(
                    "{id} {}",
                    envelope.as_ref().map_or(String::new(), |e| e["data"].to_string())
                );
            }
            None => println!("- {text}"),
        }
        *seen += 1;
        if args.count > 0 && *seen >= args.count {
            return Ok(());
        }
    }
    Err("connection lost".into())
}

/// Long poll (`wait` set) or short poll: one request, cursor in `?cursor=`.
async fn poll_once(
    args: &Args,
    cursor: &mut Option<String>,
    seen: &mut usize,
    wait_seconds: Option<u32>,
) -> Result<(), Error> {
    let mut query = Vec::new();
    if let Some(wait) = wait_seconds {
        query.push(format!("wait={wait}"));
    }
    if let Some(cursor) = cursor {
        query.push(format!("cursor={cursor}"));
    }
    let path = format!("{}?{}", args.url.path(), query.join("&"));
    let response = send(&args.url, path, &[]).await?;
    let status = response.status();
    let events = response
        .headers()
        .get("x-sidestream-mode")
        .is_some_and(|m| m == "events");
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|e| e.trim_matches('"').to_string());
    let body = response.into_body().collect().await?.to_bytes();
    match status.as_u16() {
        304 => Ok(()),
        200 if events => {
            let batch: serde_json::Value = serde_json::from_slice(&body)?;
            if batch["reset"] == true {
                println!("(reset: the cursor was unknown; continuing from what history holds)");
            }
            for message in batch["messages"].as_array().into_iter().flatten() {
                println!("{} {}", message["id"].as_str().unwrap_or("-"), message["data"]);
                *seen += 1;
            }
            *cursor = batch["cursor"].as_str().map(str::to_string);
            Ok(())
        }
        200 => {
            *cursor = etag;
            println!(
                "{} {}",
                cursor.as_deref().unwrap_or("-"),
                String::from_utf8_lossy(&body)
            );
            *seen += 1;
            Ok(())
        }
        _ => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()).into()),
    }
}
