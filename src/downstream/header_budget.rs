//! The request header's byte budget, enforced on the socket itself: pingora buffers a
//! request header up to its own 1 MiB limit before any filter of ours sees it, so a check
//! after parsing does not bound memory (10 000 slow connections could hold ~10 GiB). Each
//! connection's stream is wrapped so that, until the current request's header is marked
//! complete, at most `max_request_header_bytes` (+ [`SLACK_BYTES`]) are read from it; a
//! client that needs more gets a `431` written straight to the socket and the connection
//! ends.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::write_buffer::WriteBuffer;
use crate::metrics::METRICS;

/// Read beyond the limit before the connection is cut: the precise check (`431` with the
/// measured size, in the proxy's request filter) counts header bytes a little differently
/// from the raw bytes on the wire (line ends, the blank line), and a header just over the
/// limit should get that answer rather than a cut connection.
pub const SLACK_BYTES: usize = 4096;

/// Sent when the budget is spent; best effort (one non-blocking write), then the read fails.
const REFUSAL: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 44\r\nConnection: close\r\n\r\n\
    the request header is larger than the limit\n";

/// What one connection's current request header may still read.
#[derive(Debug)]
pub struct HeaderBudget {
    max_bytes: usize,
    read: AtomicUsize,
    complete: AtomicBool,
}

impl HeaderBudget {
    pub fn new(max_request_header_bytes: usize) -> Arc<Self> {
        Arc::new(HeaderBudget {
            max_bytes: max_request_header_bytes.saturating_add(SLACK_BYTES),
            read: AtomicUsize::new(0),
            complete: AtomicBool::new(false),
        })
    }

    /// A new request starts (the connection's first, or the next on keep-alive).
    pub fn start_request(&self) {
        self.start_request_after(0);
    }

    /// A new request starts whose first `already_read` bytes were read before it started
    /// (by a read that was watching the connection for something else).
    pub fn start_request_after(&self, already_read: usize) {
        self.read.store(already_read, Ordering::Relaxed);
        self.complete.store(false, Ordering::Relaxed);
    }

    /// The header has been parsed: the body (or a WebSocket) reads without this budget.
    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Relaxed);
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    /// Bytes the current request's header read from the socket (until it was complete).
    pub fn bytes_read(&self) -> usize {
        self.read.load(Ordering::Relaxed)
    }

    /// How many more bytes may be read now; `None`: unlimited.
    fn remaining(&self) -> Option<usize> {
        if self.is_complete() {
            return None;
        }
        Some(self.max_bytes.saturating_sub(self.read.load(Ordering::Relaxed)))
    }

    fn record(&self, bytes: usize) {
        if !self.is_complete() {
            self.read.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// A client connection whose reads are limited by its [`HeaderBudget`]; its writes go
/// through a [`WriteBuffer`] that holds memory only while it holds bytes.
pub struct HeaderLimited {
    inner: Stream,
    budget: Arc<HeaderBudget>,
    refused: bool,
    writes: WriteBuffer,
}

impl HeaderLimited {
    pub fn wrap(inner: Stream, budget: Arc<HeaderBudget>, write_buffer_bytes: usize) -> Stream {
        Box::new(HeaderLimited {
            inner,
            budget,
            refused: false,
            writes: WriteBuffer::new(write_buffer_bytes),
        })
    }
}

impl fmt::Debug for HeaderLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderLimited")
            .field("inner", &self.inner)
            .field("budget", &self.budget)
            .finish()
    }
}

impl AsyncRead for HeaderLimited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(remaining) = this.budget.remaining() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if remaining == 0 {
            if !this.refused {
                this.refused = true;
                METRICS
                    .limit_hits
                    .with_label_values(&["request_header_bytes"])
                    .inc();
                // Whatever fits into the socket now; the client may well not be reading.
                let _ = this.writes.poll_flush(&mut this.inner, cx);
                let _ = Pin::new(&mut this.inner).poll_write(cx, REFUSAL);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the request header is larger than max_request_header_bytes",
            )));
        }
        if remaining >= buf.remaining() {
            // The whole buffer fits the budget: read into it as it is (a limited view would
            // zero-initialize its unfilled part first, a memset per read).
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = polled {
                this.budget.record(buf.filled().len() - before);
            }
            return polled;
        }
        // Never more than the budget into pingora's buffer, even in one read.
        let take = remaining.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(take));
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let filled = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(filled);
            this.budget.record(filled);
        }
        polled
    }
}

impl AsyncWrite for HeaderLimited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.writes.poll_write(&mut this.inner, cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.writes.poll_flush(&mut this.inner, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.writes.poll_shutdown(&mut this.inner, cx)
    }
}

#[async_trait]
impl Shutdown for HeaderLimited {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderLimited {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderLimited {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderLimited {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderLimited {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderLimited {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderLimited {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_at_most_the_budget_until_the_header_is_complete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        let budget = HeaderBudget::new(1000);
        let mut limited = HeaderLimited::wrap(stream, budget.clone(), 0);
        client.write_all(&vec![b'a'; 20_000]).await.unwrap();

        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        let error = loop {
            match limited.read(&mut buf).await {
                Ok(0) => panic!("no EOF expected"),
                Ok(n) => total += n,
                Err(error) => break error,
            }
        };
        assert_eq!(total, 1000 + SLACK_BYTES, "exactly the budget was read");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let mut answer = vec![0u8; REFUSAL.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 431 "));

        // Once the header is complete, the body reads freely; the next request starts over.
        budget.mark_complete();
        let n = limited.read(&mut buf).await.unwrap();
        assert!(n > 0);
        budget.start_request();
        assert_eq!(budget.remaining(), Some(1000 + SLACK_BYTES));
    }
}
