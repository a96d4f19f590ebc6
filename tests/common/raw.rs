//! A request sent byte for byte: request targets no HTTP client library would send as given
//! (`//x`, `\`, raw `%`, dot segments).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A response as read off the wire: status and everything after the header (chunked bodies
/// stay framed, which is enough to look for text in them).
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `METHOD target HTTP/1.1` with `headers`, on a fresh connection the sidecar closes after
/// the response. Bounded by `WAIT`.
pub async fn raw_request(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> RawReply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A reset after the response (the server closing with unread input) still leaves the
    // response read so far.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("the response ends within the bound");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    RawReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}
