//! A client connection's write buffer, held only while it holds bytes.
//!
//! pingora writes a response's header and its first body bytes separately and flushes after;
//! a buffer joins them into one `send`. pingora's own L4 buffer is allocated for the whole
//! life of the connection, though: 1.5 KiB of every idle SSE, WebSocket and held long-poll
//! client, which only ever write whole frames and flush at once. This one is allocated on
//! the first write after a flush and freed by the flush that empties it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

#[derive(Debug, Default)]
pub struct WriteBuffer {
    capacity: usize,
    pending: Vec<u8>,
}

impl WriteBuffer {
    /// `capacity` 0: every write goes straight to the socket.
    pub fn new(capacity: usize) -> Self {
        WriteBuffer {
            capacity,
            pending: Vec::new(),
        }
    }

    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut *inner).poll_write(cx, &self.pending[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(error)) => break Poll::Ready(Err(error)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.pending.drain(..written);
        if self.pending.is_empty() {
            // Idle connections hold no buffer.
            self.pending = Vec::new();
        }
        result
    }

    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() + buf.len() > self.capacity {
            ready!(self.poll_drain(inner, cx))?;
        }
        if buf.len() >= self.capacity {
            return Pin::new(inner).poll_write(cx, buf);
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner, cx))?;
        Pin::new(inner).poll_flush(cx)
    }

    pub fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner, cx))?;
        Pin::new(inner).poll_shutdown(cx)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A socket that takes at most `room` bytes before it would block.
    struct Socket {
        room: usize,
        sent: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.sent.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn small_writes_go_out_as_one_send_and_the_buffer_is_freed_after() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut socket = Socket {
            room: 1000,
            sent: Vec::new(),
        };
        let mut buffer = WriteBuffer::new(100);
        assert!(matches!(
            buffer.poll_write(&mut socket, &mut cx, b"HTTP/1.1 200 OK\r\n\r\n"),
            Poll::Ready(Ok(19))
        ));
        assert!(matches!(
            buffer.poll_write(&mut socket, &mut cx, b"body"),
            Poll::Ready(Ok(4))
        ));
        assert!(socket.sent.is_empty(), "nothing sent before the flush");
        assert!(matches!(
            buffer.poll_flush(&mut socket, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(socket.sent, vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]);
        assert_eq!(buffer.pending.capacity(), 0, "an idle connection holds no buffer");
        // A write as large as the buffer goes straight out.
        let big = vec![b'x'; 100];
        assert!(matches!(
            buffer.poll_write(&mut socket, &mut cx, &big),
            Poll::Ready(Ok(100))
        ));
        assert_eq!(socket.sent.len(), 2);
    }

    #[test]
    fn what_the_socket_does_not_take_stays_in_order() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut socket = Socket {
            room: 3,
            sent: Vec::new(),
        };
        let mut buffer = WriteBuffer::new(100);
        assert!(matches!(
            buffer.poll_write(&mut socket, &mut cx, b"abcdef"),
            Poll::Ready(Ok(6))
        ));
        assert!(buffer.poll_flush(&mut socket, &mut cx).is_pending());
        assert!(!buffer.is_empty());
        socket.room = 100;
        assert!(matches!(
            buffer.poll_flush(&mut socket, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(socket.sent.concat(), b"abcdef".to_vec());
    }
}
