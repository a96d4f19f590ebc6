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
//!
//! On a plain TCP connection whose buffers are empty, the direct write is the `send`
//! itself, on the socket's descriptor: not through the connection wrapper's write buffer
//! (which would copy the frame into a fresh allocation and then flush it) and pingora's L4
//! stream (its write-time accounting reads the clock twice), which were together ~8 % of a
//! 1 000-client WebSocket fan-out's samples. The kernel keeps the byte order: nothing
//! waits in any buffer above the socket (`unflushed`), and whatever the `send` does not
//! take becomes the tail, written before anything else.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
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
    /// The connection's task (or pingora, before the hand-off) may have left bytes in a
    /// buffer above the socket: until a flush has emptied them, a `send` on the descriptor
    /// could overtake them.
    unflushed: bool,
    /// The TCP socket under `stream`, when it is one that a plain `send` may write (not
    /// TLS, not a test's in-memory stream).
    raw_fd: Option<RawFd>,
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
        let raw_fd = plain_tcp_fd(&stream);
        Arc::new(Socket {
            state: Mutex::new(SocketState {
                stream,
                tail: Bytes::new(),
                flush_owed: false,
                foreign_mid_frame: false,
                unflushed: true,
                raw_fd,
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
        if let (Some(fd), false) = (state.raw_fd, state.unflushed) {
            let written = send_now(fd, bytes);
            if written == 0 {
                return TryWrite::Refused;
            }
            state.last_direct_write = Some(Instant::now());
            if written == bytes.len() {
                return TryWrite::Done;
            }
            state.tail = bytes.slice(written..);
            drop(state);
            self.unfinished.notify_one();
            return TryWrite::Started;
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
            // Either way nothing waits above the socket any more.
            state.unflushed = false;
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
        state.unflushed = true;
        let written = poll_write_through(&mut state.stream, cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            state.foreign_mid_frame = observe(&buf[..count]);
        }
        written
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        state.unflushed = true;
        poll_write_through(&mut state.stream, cx, buf)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        ready!(state.poll_tail(cx))?;
        ready!(Pin::new(&mut state.stream).poll_flush(cx))?;
        state.flush_owed = false;
        state.unflushed = false;
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
    /// See [`crate::hub::DirectSink::prefetch`]: the socket's state, which the write locks.
    pub fn prefetch(&self) {
        crate::hub::prefetch::prefetch(Arc::as_ptr(&self.socket));
    }

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

/// The descriptor a plain `send` may write `stream`'s bytes to: only pingora's listener gives
/// a stream a socket digest (from the accepted socket's descriptor, which is also its `id`),
/// so a stream built any other way (a test's) has none; a TLS stream's bytes must go
/// through TLS. It does not change for the stream's life: look it up once per connection
/// (it clones the digest, and asked through the layers on every poll it was 2 % of a
/// long-poll fan-out's samples).
pub fn plain_tcp_fd(stream: &Stream) -> Option<RawFd> {
    (stream.get_ssl().is_none() && stream.get_socket_digest().is_some()).then(|| stream.id())
}

/// Writes what it can of `bytes` with the `send` itself on `fd` (the stream's
/// [`plain_tcp_fd`]) when nothing waits in a buffer above the socket, and returns how many
/// bytes the kernel took; 0 when there is no such descriptor, or the send would block, or
/// failed: the caller writes the rest through the stream as usual (which also finds out
/// which). A long-poll answer is written this way: no copy into the wrapper's write buffer,
/// no write timer armed when the socket takes it all, as it almost always does.
pub fn send_if_flushed(stream: &mut Stream, fd: Option<RawFd>, bytes: &[u8]) -> usize {
    match fd {
        Some(fd) if flushed(stream) => send_now(fd, bytes),
        _ => 0,
    }
}

/// Whether nothing waits in a buffer above the socket, so that a `send` on its descriptor
/// cannot overtake anything. With nothing buffered a flush is complete at once, without a
/// syscall. The no-op waker is harmless: the caller is not waiting on the socket, and its
/// own writes poll with its own waker.
pub fn flushed(stream: &mut Stream) -> bool {
    matches!(
        Pin::new(&mut *stream).poll_flush(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Ok(()))
    )
}

/// Hands `bytes` to the kernel without waiting, on the descriptor itself; returns how many
/// it took (0: would block, failed or closed — the connection's task finds out which on its
/// next read or write, through tokio, whose readiness this never changes).
pub(crate) fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        // MSG_NOSIGNAL: a client gone away is an `EPIPE` here, not a signal.
        match send(
            fd,
            &bytes[written..],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    written
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::header_budget::{HeaderBudget, HeaderLimited};
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A loopback connection as the server sees it after the hand-off (pingora's L4 stream
    /// with its socket digest, inside sidestream's wrapper with its 1 460-byte write
    /// buffer), and the client's end.
    async fn connection() -> (Arc<Socket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let digest = SocketDigest::from_raw_fd(accepted.as_raw_fd());
        let mut l4 = pingora_core::protocols::l4::stream::Stream::from(accepted);
        l4.set_socket_digest(digest);
        let budget = HeaderBudget::new(8192);
        budget.mark_complete();
        (
            Socket::new(HeaderLimited::wrap(Box::new(l4), budget, 1460)),
            client,
        )
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        tokio::time::timeout(std::time::Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the bytes arrive")
            .expect("read");
        got
    }

    #[tokio::test]
    async fn a_direct_write_never_overtakes_bytes_the_connection_left_unflushed() {
        let (socket, mut client) = connection().await;
        let mut handle = SocketHandle(socket.clone());
        handle.write_all(b"first;").await.expect("write");
        handle.flush().await.expect("flush");
        // Now in the wrapper's write buffer, not yet in the kernel.
        handle.write_all(b"second;").await.expect("write");
        assert_ne!(
            socket.try_write_now(&Bytes::from_static(b"third;")),
            TryWrite::Refused
        );
        handle.flush().await.expect("flush");
        assert_eq!(read_exactly(&mut client, 19).await, b"first;second;third;");
        // Flushed: the next direct write is the `send` itself, still in order.
        assert_eq!(
            socket.try_write_now(&Bytes::from_static(b"fourth;")),
            TryWrite::Done
        );
        handle.write_all(b"fifth;").await.expect("write");
        handle.flush().await.expect("flush");
        assert_eq!(read_exactly(&mut client, 13).await, b"fourth;fifth;");
    }

    #[tokio::test]
    async fn what_a_full_socket_did_not_take_is_written_first_by_the_connection() {
        let (socket, mut client) = connection().await;
        let mut handle = SocketHandle(socket.clone());
        handle.flush().await.expect("flush");
        // The client reads nothing until the kernel's buffers are full: direct writes are
        // taken whole, then one in part (its tail kept), then refused.
        let frame: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let frame = Bytes::from(frame);
        let mut accepted = 0;
        let mut outcomes = Vec::new();
        for _ in 0..1000 {
            let outcome = socket.try_write_now(&frame);
            if outcome == TryWrite::Refused {
                break;
            }
            accepted += 1;
            outcomes.push(outcome);
        }
        assert!(accepted < 1000, "a socket nobody reads fills up");
        assert_eq!(
            outcomes.last(),
            Some(&TryWrite::Started),
            "the last one went in part"
        );
        assert_eq!(
            socket.try_write_now(&frame),
            TryWrite::Refused,
            "nothing more while a tail waits"
        );
        let reader = tokio::spawn(async move { read_exactly(&mut client, accepted * frame.len() + 4).await });
        // The connection's task finishes the tail before its own bytes.
        handle.write_all(b"end;").await.expect("write");
        handle.flush().await.expect("flush");
        let got = reader.await.expect("reader");
        let frame: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for (index, chunk) in got[..accepted * frame.len()].chunks(frame.len()).enumerate() {
            assert!(
                chunk == frame.as_slice(),
                "frame {index} arrived whole and in order"
            );
        }
        assert_eq!(&got[accepted * frame.len()..], b"end;");
    }

    #[tokio::test]
    async fn an_answer_is_sent_directly_only_after_what_waits_above_the_socket() {
        let (socket, mut client) = connection().await;
        let Ok(state) = Arc::try_unwrap(socket).map(|socket| socket.state.into_inner()) else {
            panic!("the socket is not shared yet");
        };
        let mut stream = state.unwrap_or_else(PoisonError::into_inner).stream;
        let fd = plain_tcp_fd(&stream);
        assert!(fd.is_some(), "the test's stream has a socket digest");
        let mut expected = Vec::new();
        assert_eq!(send_if_flushed(&mut stream, fd, b"one;"), 4);
        expected.extend_from_slice(b"one;");
        // Buffered in the wrapper: the flush sends it before the answer.
        stream.write_all(b"two;").await.expect("write");
        assert_eq!(send_if_flushed(&mut stream, fd, b"three;"), 6);
        expected.extend_from_slice(b"two;three;");
        // Fill the socket (the client reads nothing yet) until a send takes only part (the
        // test leaves the rest of that chunk unsent: what arrives is what was taken).
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut filled = false;
        for _ in 0..1000 {
            let sent = send_if_flushed(&mut stream, fd, &chunk);
            expected.extend_from_slice(&chunk[..sent]);
            if sent < chunk.len() {
                filled = true;
                break;
            }
        }
        assert!(filled, "a socket nobody reads fills up");
        // Now a write through the stream waits in its buffer, and nothing may be sent past it.
        stream.write_all(b"five;").await.expect("write");
        assert_eq!(
            send_if_flushed(&mut stream, fd, b"six;"),
            0,
            "bytes wait above a full socket"
        );
        expected.extend_from_slice(b"five;six;");
        let total = expected.len();
        let reader = tokio::spawn(async move { read_exactly(&mut client, total).await });
        stream.write_all(b"six;").await.expect("write");
        stream.flush().await.expect("flush");
        assert!(
            reader.await.expect("reader") == expected,
            "every byte once, in order"
        );
    }

    #[tokio::test]
    async fn a_stream_without_a_socket_digest_is_written_through_its_layers() {
        // Only pingora's listener sets the digest; a stream built any other way may not be
        // a socket at all (its `id` need not be a descriptor).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let socket = Socket::new(Box::new(pingora_core::protocols::l4::stream::Stream::from(
            accepted,
        )));
        assert_eq!(socket.lock().raw_fd, None);
        assert_eq!(
            {
                let stream = &mut socket.lock().stream;
                send_if_flushed(stream, plain_tcp_fd(stream), b"never")
            },
            0
        );
        assert_eq!(
            socket.try_write_now(&Bytes::from_static(b"layered;")),
            TryWrite::Done
        );
        assert_eq!(read_exactly(&mut client, 8).await, b"layered;");
    }
}
