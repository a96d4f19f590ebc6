//! Straight-to-socket delivery: a client's socket shared by its connection task and the
//! publishing task.
//!
//! A fan-out through queues costs, per subscriber, a push, a wake-up, a scheduler turn and
//! a poll of the connection's whole `select!` before the one write that matters. When a
//! connection is parked with nothing in flight (the hub decides that, see
//! [`crate::hub::DirectSink`]), the publishing task instead writes the shared frame into
//! the socket itself, without waiting: one `send` per subscriber, as nchan does inside
//! nginx's event loop. Whatever the kernel does not take at once stays here as the
//! socket's tail and the connection's task is woken to finish it; until then, and while
//! another writer on the socket is inside a frame, direct writes are refused and messages
//! take the queue.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use pingora_core::protocols::Stream;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hub::{Message, Topic};

/// A client connection's socket, shared by its task and the publishing task.
pub struct Socket {
    state: Mutex<SocketState>,
    /// Wakes the connection's task when a direct write left it something to finish.
    unfinished: Notify,
}

struct SocketState {
    stream: Stream,
    /// What a direct write could not hand over at once; it goes out before anything else.
    tail: Bytes,
    /// Bytes wait in the stream's write buffer: a direct flush would have blocked.
    flush_owed: bool,
    /// Another writer on this socket (the WebSocket crate) has written part of a frame.
    foreign_mid_frame: bool,
    last_direct_write: Option<Instant>,
}

/// What [`Socket::try_write_now`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum TryWrite {
    /// All of it is in the kernel.
    Done,
    /// Some of it is; the connection's task has been woken to write the rest.
    Started,
    /// Nothing was written.
    Refused,
}

impl Socket {
    pub fn new(stream: Stream) -> Arc<Self> {
        Arc::new(Socket {
            state: Mutex::new(SocketState {
                stream,
                tail: Bytes::new(),
                flush_owed: false,
                foreign_mid_frame: false,
                last_direct_write: None,
            }),
            unfinished: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SocketState> {
        // Every write leaves the state consistent between polls; a panic elsewhere must
        // not take the client's socket with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes` now, never waiting: from the publishing task, for a parked connection.
    pub fn try_write_now(&self, bytes: &Bytes) -> TryWrite {
        // Outside tokio's cooperative budget: the publishing task writes to many sockets in
        // one turn, and past its budget (128 operations) every write would say "would
        // block" and every later client would take the queue.
        let mut attempt = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(self.write_without_waiting(cx, bytes))
        })));
        match attempt.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => TryWrite::Refused,
        }
    }

    fn write_without_waiting(&self, cx: &mut Context<'_>, bytes: &Bytes) -> TryWrite {
        let mut state = self.lock();
        if !state.tail.is_empty() || state.flush_owed || state.foreign_mid_frame {
            return TryWrite::Refused;
        }
        // `cx` wakes nobody: when the socket would block, the connection's task is told
        // (`unfinished`) and polls with its own waker.
        let mut written = 0;
        while written < bytes.len() {
            match poll_write_through(&mut state.stream, cx, &bytes[written..]) {
                Poll::Ready(Ok(n)) if n > 0 => written += n,
                // Would block, failed or closed: the connection's task finds out which.
                _ => break,
            }
        }
        if written == 0 {
            return TryWrite::Refused;
        }
        state.last_direct_write = Some(Instant::now());
        if written < bytes.len() {
            state.tail = bytes.slice(written..);
        } else if Pin::new(&mut state.stream).poll_flush(cx).is_ready() {
            // Flushed, or failed: a failure shows on the connection's next read or write.
            return TryWrite::Done;
        } else {
            state.flush_owed = true;
        }
        drop(state);
        self.unfinished.notify_one();
        TryWrite::Started
    }

    /// Resolves when a direct write left something for the connection's task to finish
    /// (by flushing); may resolve spuriously.
    pub async fn unfinished(&self) {
        self.unfinished.notified().await;
    }

    /// When the publishing task last wrote here (a keepalive is not due before the interval
    /// has passed since).
    pub fn last_direct_write(&self) -> Option<Instant> {
        self.lock().last_direct_write
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_read(cx, buf)
    }

    /// Writes `buf` after the tail; `observe` sees what was taken (under the same lock, so
    /// that no direct write can slip in before it has said whether a frame is unfinished).
    fn poll_write_observed(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        observe: impl FnOnce(&[u8]) -> bool,
    ) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        let written = poll_write_through(&mut state.stream, cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            state.foreign_mid_frame = observe(&buf[..count]);
        }
        written
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        poll_write_through(&mut state.stream, cx, buf)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        ready!(Pin::new(&mut state.stream).poll_flush(cx))?;
        state.flush_owed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        Pin::new(&mut state.stream).poll_shutdown(cx)
    }
}

/// What a transport's direct sink writes through: the socket, and the counts the
/// connection's own write of a message would have made.
pub struct DirectWriter {
    pub socket: Arc<Socket>,
    pub topic: Arc<Topic>,
    pub deliveries: IntCounter,
    pub bytes_written: IntCounter,
}

impl DirectWriter {
    /// Writes `frame`, the encoding of `message`, now if the socket takes it without
    /// waiting (`false`: nothing was written), and counts the delivery.
    pub fn write(&self, message: &Message, frame: &Bytes) -> bool {
        if self.socket.try_write_now(frame) == TryWrite::Refused {
            return false;
        }
        self.deliveries.inc();
        crate::metrics::delivered(&self.topic, message, 1);
        self.bytes_written.inc_by(frame.len() as u64);
        self.topic.stats().wrote(frame.len());
        true
    }
}

/// A plain write (a `send`): a vectored one would be a `writev`, which costs more in the
/// kernel (measured: `vfs_writev` alone was 4 % of a fan-out's profile).
fn poll_write_through(stream: &mut Stream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    Pin::new(stream).poll_write(cx, buf)
}

impl SocketState {
    fn poll_tail(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tail.is_empty() {
            match ready!(poll_write_through(&mut self.stream, cx, &self.tail))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.tail.advance(n),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The connection's own handle on its shared socket.
#[derive(Clone)]
pub struct SocketHandle(pub Arc<Socket>);

impl SocketHandle {
    /// Like `AsyncWrite::poll_write`, with `observe` told what was written (see
    /// [`Socket::poll_write_observed`]); it returns whether a frame is left unfinished.
    pub fn poll_write_observed(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        observe: impl FnOnce(&[u8]) -> bool,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_observed(cx, buf, observe)
    }
}

impl AsyncRead for SocketHandle {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for SocketHandle {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_shutdown(cx)
    }
}
