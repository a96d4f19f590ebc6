//! A deliberately low-level WebSocket test client: it writes exactly the bytes a test asks
//! for (so malformed frames can be sent) and shows every frame it reads, inflating
//! permessage-deflate payloads itself.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WsFrame {
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).unwrap()
    }

    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct WsClient {
    stream: TcpStream,
    buffer: BytesMut,
    pub status: u16,
    pub response: String,
}

impl WsClient {
    /// Opens a WebSocket; `extensions` is sent as `Sec-WebSocket-Extensions`.
    pub async fn connect(
        port: u16,
        path: &str,
        extensions: Option<&str>,
        extra: &[(&str, &str)],
    ) -> WsClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(extensions) = extensions {
            request.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
        }
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = BytesMut::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let read = tokio::time::timeout(WAIT, stream.read_buf(&mut buffer))
                .await
                .unwrap()
                .unwrap();
            assert!(read > 0, "connection closed during the handshake");
        };
        let head = String::from_utf8(buffer.split_to(end + 4).to_vec()).unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        WsClient {
            stream,
            buffer,
            status,
            response: head,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.response.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    /// Sends raw bytes, as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends one frame, masked (as clients must) unless `masked` is false.
    pub async fn send_frame(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8], masked: bool) {
        let bytes = encode_client_frame(fin, rsv1, opcode, payload, masked);
        self.send_raw(&bytes).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, false, TEXT, text.as_bytes(), true).await;
    }

    /// The next frame, or `None` when the server closed the TCP connection.
    pub async fn read_frame(&mut self) -> Option<WsFrame> {
        self.read_frame_within(WAIT)
            .await
            .expect("a frame within the bound")
    }

    /// `Err(())` on timeout.
    pub async fn read_frame_within(&mut self, limit: Duration) -> Result<Option<WsFrame>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(frame) = parse_frame(&mut self.buffer) {
                return Ok(Some(frame));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next data message (pings answered with pongs), inflated if compressed.
    pub async fn read_message(&mut self) -> WsFrame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut frame = self
                .read_frame_within(left)
                .await
                .expect("a message within the bound")
                .expect("connection open");
            match frame.opcode {
                PING => {
                    let payload = frame.payload.clone();
                    self.send_frame(true, false, PONG, &payload, true).await;
                }
                TEXT | BINARY => {
                    if frame.rsv1 {
                        frame.payload = inflate(&frame.payload);
                        frame.rsv1 = false;
                    }
                    return frame;
                }
                other => panic!("unexpected frame {other:#x}: {frame:?}"),
            }
        }
    }

    /// Reads until a close frame (returning its code) or EOF (`None`), answering pings.
    pub async fn read_until_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .read_frame_within(left)
                .await
                .expect("a close within the bound")
            {
                None => return None,
                Some(frame) if frame.opcode == CLOSE => return frame.close_code(),
                Some(_) => {}
            }
        }
    }
}

pub fn encode_client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn parse_frame(buffer: &mut BytesMut) -> Option<WsFrame> {
    if buffer.len() < 2 {
        return None;
    }
    let (first, second) = (buffer[0], buffer[1]);
    assert_eq!(second & 0x80, 0, "server frames are never masked");
    let (length, header) = match second & 0x7F {
        126 if buffer.len() >= 4 => (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4),
        127 if buffer.len() >= 10 => (u64::from_be_bytes(buffer[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        small => (small as usize, 2),
    };
    if buffer.len() < header + length {
        return None;
    }
    buffer.advance(header);
    let payload = buffer.split_to(length).to_vec();
    Some(WsFrame {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        opcode: first & 0x0F,
        payload,
    })
}

/// RFC 7692 inflate of one message with a fresh context (the server does not keep one).
pub fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF]);
    let mut decompressor = Decompress::new(false);
    let mut output = Vec::with_capacity(data.len() * 8 + 1024);
    loop {
        let before = decompressor.total_in() as usize;
        decompressor
            .decompress_vec(&input[before..], &mut output, FlushDecompress::Sync)
            .expect("valid deflate stream");
        if decompressor.total_in() as usize == input.len() {
            return output;
        }
        output.reserve(output.capacity());
    }
}

/// RFC 7692 inflate of one message as a client keeping only a `bits` window does it: the
/// output comes a few bytes at a time, so a back-reference further than the window fails
/// (with one large output buffer zlib could reach back into it and hide the error).
pub fn inflate_with_window(data: &[u8], bits: u8) -> Result<Vec<u8>, String> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF]);
    let mut decompressor = Decompress::new_with_window_bits(false, bits);
    let mut output = Vec::new();
    loop {
        let consumed = decompressor.total_in() as usize;
        let before = decompressor.total_out();
        let mut chunk = [0u8; 16];
        let status = decompressor
            .decompress(&input[consumed..], &mut chunk, FlushDecompress::Sync)
            .map_err(|error| error.to_string())?;
        let produced = (decompressor.total_out() - before) as usize;
        output.extend_from_slice(&chunk[..produced]);
        let all_in = decompressor.total_in() as usize == input.len();
        if (all_in && produced < chunk.len()) || status == Status::StreamEnd {
            return Ok(output);
        }
        if produced == 0 && decompressor.total_in() as usize == consumed {
            return Err("inflate made no progress".into());
        }
    }
}
