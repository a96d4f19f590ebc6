//! The next request on a held long poll's connection is read by sidestream itself
//! (`downstream::next_poll`): a long poll there is served off pingora's request path, and
//! anything else on that connection is still served (or refused) exactly as pingora serves it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::raw::{header, read_response};
use common::*;
use serde_json::Value;
use sidestream::hub::{Topic, TopicKey};
use sidestream::metrics::METRICS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPICS: &str = r#"
[[topic]]
name = "feed"
path = "/feed"
mode = "events"
history_max_messages = 64
source.poll = { url = "/feed-source", interval_ms = 100, jitter_ms = 0 }

[limits]
request_header_timeout_ms = 3000
"#;

struct Setup {
    backend: std::sync::Arc<TestBackend>,
    sidecar: TestSidecar,
    topic: std::sync::Arc<Topic>,
    /// The next value the backend serves (each new one is a new event).
    next_value: u64,
}

async fn setup() -> Setup {
    setup_with_upstream("").await
}

/// [`setup`] with extra `[upstream]` lines.
async fn setup_with_upstream(upstream: &str) -> Setup {
    let backend = TestBackend::start().await;
    backend.set("/feed-source", Behaviour::Json("0".into()));
    backend.set(
        "/hello",
        Behaviour::Plain("text/plain", "from the backend".into()),
    );
    let sidecar =
        TestSidecar::start_with_upstream(backend.port, upstream, "long_poll_max_wait_ms = 10000", TOPICS)
            .await;
    get(sidecar.port, "/feed?wait=0", &[]).await;
    let topic = sidecar.registry.get(&TopicKey::new("feed", vec![])).unwrap();
    eventually("the poller's first message", || topic.cursor().seq >= 1).await;
    Setup {
        backend,
        sidecar,
        topic,
        next_value: 1,
    }
}

/// The backend's values 1 to `count`, each once, in order.
fn assert_every_change_once_in_order(values: &[u64], count: u64) {
    assert_eq!(
        values,
        (1..=count).collect::<Vec<u64>>(),
        "every change once, in order"
    );
}

/// The `200` answer read next on `stream`: its messages' data, and the whole answer.
async fn answered_at_once(stream: &mut TcpStream) -> (Vec<u64>, Value) {
    let (status, _, body) = read_response(stream).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let data = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_u64().unwrap())
        .collect();
    (data, answer)
}

impl Setup {
    /// Sends a long poll after `cursor` on `stream`, waits until it is held, makes the
    /// backend change, and returns the answer's data and cursor.
    async fn held_poll(&mut self, stream: &mut TcpStream, cursor: &str) -> (u64, String) {
        let poll = format!("GET /feed?wait=10&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
        self.held_request(stream, &poll).await
    }

    /// [`Setup::held_poll`] with the request as given; the answer's `ETag` is its cursor.
    async fn held_request(&mut self, stream: &mut TcpStream, poll: &str) -> (u64, String) {
        stream.write_all(poll.as_bytes()).await.unwrap();
        eventually("the poll is held", || self.topic.subscriber_count() == 1).await;
        self.backend
            .set("/feed-source", Behaviour::Json(self.next_value.to_string()));
        self.next_value += 1;
        let (status, headers, body) = read_response(stream).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(header(&headers, "connection"), Some("close"));
        let answer: Value = serde_json::from_str(&body).unwrap();
        let messages = answer["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "one change, one message: {body}");
        assert_eq!(
            header(&headers, "etag").map(str::to_string),
            answer["cursor"].as_str().map(|cursor| format!("\"{cursor}\""))
        );
        eventually("the answered poll is done", || self.topic.subscriber_count() == 0).await;
        (
            messages[0]["data"].as_u64().unwrap(),
            answer["cursor"].as_str().unwrap().to_string(),
        )
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.sidecar.addr()).await.unwrap()
    }
}

#[tokio::test]
async fn a_connections_next_polls_are_read_directly_in_order_without_a_gap() {
    let mut setup = setup().await;
    let mut stream = setup.connect().await;
    let mut cursor = setup.topic.cursor().to_string();
    // The first poll goes through pingora; the ones after it on the connection do not.
    let (first, next) = setup.held_poll(&mut stream, &cursor).await;
    cursor = next;
    let read_directly = METRICS.long_polls_read_directly.get();
    let mut values = vec![first];
    let mut behind = String::new();
    for round in 0..5 {
        if round == 3 {
            behind = cursor.clone();
        }
        let (value, next) = setup.held_poll(&mut stream, &cursor).await;
        values.push(value);
        cursor = next;
    }
    assert_every_change_once_in_order(&values, 6);
    // (Other tests in this binary may add to the counter too; these five did at least.)
    assert!(METRICS.long_polls_read_directly.get() >= read_directly + 5);

    // A poll whose cursor is already behind is answered at once, from history.
    let poll = format!("GET /feed?wait=10&cursor={behind} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(poll.as_bytes()).await.unwrap();
    let (data, answer) = answered_at_once(&mut stream).await;
    assert_eq!(data, vec![5, 6]);
    assert_eq!(answer["cursor"].as_str(), Some(cursor.as_str()));
}

#[tokio::test]
async fn a_poll_repeated_with_a_new_if_none_match_is_served_in_order() {
    // A client sending the same request each time with only `If-None-Match` changed (what
    // fanbench and browsers' conditional requests do): after its first lane poll, the lane
    // knows the request again and admits it without routing it anew.
    let mut setup = setup().await;
    let mut stream = setup.connect().await;
    let cursor = setup.topic.cursor().to_string();
    let (first, mut cursor) = setup.held_poll(&mut stream, &cursor).await;
    let poll = |cursor: &str| {
        format!("GET /feed?wait=10 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{cursor}\"\r\n\r\n")
    };
    let mut values = vec![first];
    for _ in 0..4 {
        let (value, next) = setup.held_request(&mut stream, &poll(&cursor)).await;
        values.push(value);
        cursor = next;
    }
    assert_every_change_once_in_order(&values, 5);

    // The same request with a cursor this server never gave: refused with the reason (by
    // pingora's path, the lane hands it over), and the connection goes on.
    stream.write_all(poll("nope").as_bytes()).await.unwrap();
    let (status, headers, body) = read_response(&mut stream).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cursor"), "the reason names the cursor: {body}");
    assert_ne!(header(&headers, "connection"), Some("close"));
    // Behind: answered at once from history, the repeat's cursor read anew each time.
    let behind = setup.topic.cursor();
    let (value, _) = setup.held_request(&mut stream, &poll(&cursor)).await;
    assert_eq!(value, 6);
    let behind = format!("{}-{}", behind.epoch, behind.seq - 1);
    stream.write_all(poll(&behind).as_bytes()).await.unwrap();
    let (data, _) = answered_at_once(&mut stream).await;
    assert_eq!(data, vec![5, 6]);
}

#[tokio::test]
async fn other_requests_after_a_held_poll_are_served_as_pingora_serves_them() {
    let mut setup = setup().await;
    let mut stream = setup.connect().await;
    let cursor = setup.topic.cursor().to_string();
    let (_, cursor) = setup.held_poll(&mut stream, &cursor).await;

    // A malformed query: pingora's path refuses it with the reason, and keeps the connection.
    stream
        .write_all(b"GET /feed?wait=soon HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!(status, 400);
    assert!(body.contains("wait"), "the reason names the parameter: {body}");
    // A pass-through request reaches the backend unchanged.
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "from the backend"));
    // Back on a held poll after pingora served those, and then to SSE on the same connection.
    let (_, cursor) = setup.held_poll(&mut stream, &cursor).await;
    let sse = format!(
        "GET /feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: {cursor}\r\n\r\n"
    );
    stream.write_all(sse.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "the SSE stream closed before its head");
        head.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
}

#[tokio::test]
async fn what_ends_the_connection_after_a_held_poll_still_ends_it() {
    let mut setup = setup().await;
    // (the request after a held poll, its status; the connection then closes)
    let cases: [(&str, &str); 3] = [
        // HTTP/1.0 without keep-alive: one answer, then the connection closes.
        ("GET /feed?wait=0 HTTP/1.0\r\n\r\n", " 304 "),
        // `Connection: close` is honoured.
        (
            "GET /feed?wait=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            " 304 ",
        ),
        // A header past the byte budget is refused and the connection cut.
        ("", " 431 "),
    ];
    for (request, expected) in cases {
        let mut stream = setup.connect().await;
        let cursor = setup.topic.cursor().to_string();
        setup.held_poll(&mut stream, &cursor).await;
        let request = if request.is_empty() {
            format!(
                "GET /feed?wait=1 HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            )
        } else {
            request.to_string()
        };
        // The server may close before it has read an oversized request: ignore that error.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("the connection closes");
        let text = String::from_utf8_lossy(&rest);
        let status_line = text.lines().next().unwrap_or("");
        assert!(status_line.contains(expected), "{request:.60}: {text}");
    }

    // A client that says nothing more within the header deadline (3 s here) is closed.
    let mut stream = setup.connect().await;
    let cursor = setup.topic.cursor().to_string();
    setup.held_poll(&mut stream, &cursor).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "closed without a word");
}

#[tokio::test]
async fn the_publisher_answers_a_held_poll_and_its_next_request_may_come_in_pieces() {
    // A held poll with nothing of its own to add (no CORS, not `HEAD`) on a plain socket is
    // answered by the publishing task itself; the poll's task wakes only when the client
    // asks again, with the first bytes of that request already read by its watch.
    let mut setup = setup().await;
    let mut stream = setup.connect().await;
    let answered = METRICS.long_polls_answered_by_publisher.get();
    let mut cursor = setup.topic.cursor().to_string();
    let mut values = Vec::new();
    for round in 0..6 {
        let poll = format!("GET /feed?wait=10&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
        let rest = if round % 2 == 1 {
            // The request in two pieces: the watch reads the first one, the lane the rest.
            let (start, rest) = poll.split_at(9);
            stream.write_all(start.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            rest.to_string()
        } else {
            poll
        };
        let (value, next) = setup.held_request(&mut stream, &rest).await;
        values.push(value);
        cursor = next;
    }
    assert_every_change_once_in_order(&values, 6);
    // (Other tests in this binary may add to the counter too; these six did at least.)
    assert!(METRICS.long_polls_answered_by_publisher.get() >= answered + 6);
    // The connection goes on after the last direct answer: one more poll, up to date.
    stream
        .write_all(format!("GET /feed?wait=0&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, headers, _) = read_response(&mut stream).await;
    assert_eq!(status, 304);
    assert_ne!(header(&headers, "connection"), Some("close"));
}

#[tokio::test]
async fn a_large_answer_the_kernel_takes_in_parts_arrives_whole_and_the_connection_goes_on() {
    // 12 MB: more than a loopback socket takes in one non-blocking `send` (its send buffer
    // is at most 4 MiB here), so the publisher writes a part and the poll's task (woken for
    // it) the rest.
    let mut setup = setup_with_upstream("max_body_bytes = 16777216").await;
    // A small receive window: the server's socket fills long before the answer is out.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(setup.sidecar.addr()).await.unwrap();
    let cursor = setup.topic.cursor().to_string();
    let (_, cursor) = setup.held_poll(&mut stream, &cursor).await;
    let large = "y".repeat(12_000_000);
    let poll = format!("GET /feed?wait=10&cursor={cursor} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(poll.as_bytes()).await.unwrap();
    eventually("the poll is held", || setup.topic.subscriber_count() == 1).await;
    setup
        .backend
        .set("/feed-source", Behaviour::Json(format!("\"{large}\"")));
    // Not reading for a while: the socket fills, and the rest waits for the task.
    eventually("the event is published", || setup.topic.subscriber_count() == 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (data, answer) = {
        let (status, _, body) = read_response(&mut stream).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).unwrap();
        (
            answer["messages"][0]["data"].as_str().unwrap().to_string(),
            answer,
        )
    };
    assert!(data == large, "the whole event, byte for byte");
    let cursor = answer["cursor"].as_str().unwrap().to_string();
    // The same connection serves the next poll.
    setup.next_value = 7;
    let (value, _) = setup.held_poll(&mut stream, &cursor).await;
    assert_eq!(value, 7);
}
