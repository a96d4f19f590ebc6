//! One socket shared by the WebSocket crate and the hub's pre-encoded frames.
//!
//! The crate (yawc) owns framing for everything it reads and for the control frames it
//! writes, but compresses every frame it sends itself, once per connection. Hub messages are
//! already framed (and deflated) once per topic, so they are written straight to the socket
//! through [`RawWriter`], after the crate's own write buffer has been flushed, from the same
//! task, so the two never interleave inside a frame. The publishing task may write them
//! too ([`crate::downstream::direct`]), never while the crate is inside a frame.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use pingora_core::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::downstream::direct::{Socket, SocketHandle};

/// The socket as the WebSocket crate sees it. It also watches the frames the crate writes,
/// to know whether the crate has already sent a close frame, and whether it is inside one.
pub struct SharedStream {
    shared: SocketHandle,
    frames: FrameWatcher,
}

/// The same socket, for writing pre-encoded frames.
pub type RawWriter = SocketHandle;

/// Splits the upgraded connection into the crate's view, the raw writer, and a flag that
/// turns true once the crate has written a close frame.
pub fn share(stream: Stream) -> (SharedStream, RawWriter, Arc<AtomicBool>) {
    let shared = SocketHandle(Socket::new(stream));
    let close_sent = Arc::new(AtomicBool::new(false));
    let frames = FrameWatcher {
        header: Vec::with_capacity(10),
        payload_left: 0,
        close_sent: close_sent.clone(),
    };
    (
        SharedStream {
            shared: shared.clone(),
            frames,
        },
        shared,
        close_sent,
    )
}

/// Follows frame boundaries in the (unmasked, server-side) bytes the crate writes.
struct FrameWatcher {
    header: Vec<u8>,
    payload_left: u64,
    close_sent: Arc<AtomicBool>,
}

impl FrameWatcher {
    /// Part of a frame has been written and the rest has not.
    fn mid_frame(&self) -> bool {
        self.payload_left > 0 || !self.header.is_empty()
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if self.header.len() < 2 {
                continue;
            }
            let needed = match self.header[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            if self.header.len() < needed {
                continue;
            }
            if self.header[0] & 0x0F == 0x8 {
                self.close_sent.store(true, Ordering::SeqCst);
            }
            self.payload_left = match needed {
                4 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                10 => self.header[2..10]
                    .iter()
                    .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
                _ => u64::from(self.header[1] & 0x7F),
            };
            self.header.clear();
        }
    }
}

/// A complete server close frame (FIN, opcode 8, unmasked) with `code` and `reason`, for
/// writing through [`RawWriter`] when yawc's own close frame carries the wrong code.
/// `reason` must fit a control frame (123 bytes with the code); longer is cut.
pub fn close_frame_bytes(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88);
    frame.push(2 + reason.len() as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

impl AsyncRead for SharedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let frames = &mut this.frames;
        this.shared.poll_write_observed(cx, buf, |written| {
            frames.observe(written);
            frames.mid_frame()
        })
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watcher = FrameWatcher {
            header: Vec::new(),
            payload_left: 0,
            close_sent: flag.clone(),
        };
        for chunk in chunks {
            watcher.observe(chunk);
        }
        flag.load(Ordering::SeqCst)
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        assert_eq!(
            close_frame_bytes(1002, "no"),
            vec![0x88, 4, 0x03, 0xEA, b'n', b'o']
        );
        assert_eq!(close_frame_bytes(1000, &"x".repeat(300)).len(), 2 + 125);
    }

    #[test]
    fn sees_a_close_frame_across_chunk_boundaries_and_not_inside_payloads() {
        // A 300-byte text frame whose payload is full of 0x88 bytes, then a close frame.
        let mut text = vec![0x81, 126, 0x01, 0x2C];
        text.extend(std::iter::repeat_n(0x88u8, 300));
        assert!(!watch(&[&text]));
        let close = [0x88u8, 0x02, 0x03, 0xE8];
        let mut both = text.clone();
        both.extend_from_slice(&close);
        let (a, b) = both.split_at(3);
        assert!(watch(&[a, b]));
        assert!(watch(&[&[0x8A, 0x00], &close[..1], &close[1..]]));
    }
}
