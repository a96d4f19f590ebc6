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

/// Reads one HTTP/1.1 response with a `Content-Length` (or no) body off `stream`.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, Vec<(String, String)>, String) {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a response within the bound")
            .unwrap();
        assert!(read > 0, "the connection closed before a response head");
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the body within the bound")
            .unwrap();
        assert!(read > 0, "the connection closed inside the body");
        body.extend_from_slice(&chunk[..read]);
    }
    (status, headers, String::from_utf8(body).unwrap())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}
