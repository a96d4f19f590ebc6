//! "Encode once, write many", without the hub knowing any encoding: a per-message cache of
//! wire forms, filled by the transports on first use and shared by every subscriber.
//!
//! The hub only holds the bytes. Which slot means what (an SSE frame, an HTTP chunk, a
//! deflated WebSocket frame per window size, …) is numbered by `downstream::wire`; the hub
//! offers a fixed number of slots of two kinds:
//! - **inline** slots, for encodings made synchronously on the delivering task (cheap: one
//!   atomic load when already made). They live in the message itself.
//! - **awaited** slots, for encodings that may take long (a large deflate done off the
//!   runtime): the first client makes it, the others await the same result instead of
//!   blocking their threads or redoing it. Allocated on first use, so topics nobody asks
//!   that of pay nothing.
//!
//! Each made encoding adds its length to [`Encodings::held_bytes`], so a message's weight
//! counts what it really keeps alive.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use tokio::sync::OnceCell;

/// An inline slot number, below [`Encodings::INLINE_SLOTS`] (checked when the constant is
/// built, so a transport numbering too many fails to compile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineSlot(usize);

impl InlineSlot {
    pub const fn new(index: usize) -> Self {
        assert!(
            index < Encodings::INLINE_SLOTS,
            "inline encoding slot out of range"
        );
        InlineSlot(index)
    }
}

/// An awaited slot number, below [`Encodings::AWAITED_SLOTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwaitedSlot(usize);

impl AwaitedSlot {
    pub const fn new(index: usize) -> Self {
        assert!(
            index < Encodings::AWAITED_SLOTS,
            "awaited encoding slot out of range"
        );
        AwaitedSlot(index)
    }

    /// The slot `offset` places further on, if there is one.
    pub const fn offset(self, offset: usize) -> Option<Self> {
        if self.0 + offset < Encodings::AWAITED_SLOTS {
            Some(AwaitedSlot(self.0 + offset))
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
pub struct Encodings {
    inline: [OnceLock<Bytes>; Encodings::INLINE_SLOTS],
    awaited: OnceLock<Box<[OnceCell<Bytes>; Encodings::AWAITED_SLOTS]>>,
    held: AtomicUsize,
}

impl Encodings {
    pub const INLINE_SLOTS: usize = 6;
    pub const AWAITED_SLOTS: usize = 16;

    /// The encoding in `slot`, made by `encode` if nobody made it yet.
    pub fn inline(&self, slot: InlineSlot, encode: impl FnOnce() -> Bytes) -> Bytes {
        let cell = &self.inline[slot.0];
        if let Some(bytes) = cell.get() {
            return bytes.clone();
        }
        let mut made = None;
        let bytes = cell.get_or_init(|| {
            let bytes = encode();
            made = Some(bytes.len());
            bytes
        });
        if let Some(length) = made {
            self.held.fetch_add(length, Ordering::Relaxed);
        }
        bytes.clone()
    }

    /// The encoding in `slot`, made by awaiting `encode` if nobody made it yet; concurrent
    /// callers await the first one's result.
    pub async fn awaited<F>(&self, slot: AwaitedSlot, encode: impl FnOnce() -> F) -> Bytes
    where
        F: Future<Output = Bytes>,
    {
        let cell = &self.awaited.get_or_init(Default::default)[slot.0];
        if let Some(bytes) = cell.get() {
            return bytes.clone();
        }
        let held = &self.held;
        cell.get_or_init(|| async move {
            let bytes = encode().await;
            held.fetch_add(bytes.len(), Ordering::Relaxed);
            bytes
        })
        .await
        .clone()
    }

    /// The encoding in an awaited `slot` when it is made, or else made here at once by
    /// `encode` (for a caller that cannot wait, with an encoding cheap enough to make
    /// inline). Should another caller be making it right now, both make it, once each.
    pub fn awaited_now(&self, slot: AwaitedSlot, encode: impl FnOnce() -> Bytes) -> Bytes {
        let cell = &self.awaited.get_or_init(Default::default)[slot.0];
        if let Some(bytes) = cell.get() {
            return bytes.clone();
        }
        let bytes = encode();
        if cell.set(bytes.clone()).is_ok() {
            self.held.fetch_add(bytes.len(), Ordering::Relaxed);
        }
        bytes
    }

    /// The encoding in an awaited `slot`, if it is made.
    pub fn made(&self, slot: AwaitedSlot) -> Option<Bytes> {
        self.awaited.get()?[slot.0].get().cloned()
    }

    /// Bytes of every encoding made so far.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    const FIRST: InlineSlot = InlineSlot::new(0);
    const SECOND: InlineSlot = InlineSlot::new(1);
    const SLOW: AwaitedSlot = AwaitedSlot::new(3);

    #[test]
    fn an_inline_encoding_is_made_once_and_counted_once() {
        let encodings = Encodings::default();
        let mut calls = 0;
        let first = encodings.inline(FIRST, || {
            calls += 1;
            Bytes::from_static(b"12345")
        });
        let again = encodings.inline(FIRST, || unreachable!("made already"));
        assert_eq!(calls, 1);
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes, shared");
        encodings.inline(SECOND, || Bytes::from_static(b"xy"));
        assert_eq!(encodings.held_bytes(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_awaiters_share_one_slow_encoding() {
        let encodings = Encodings::default();
        let slow = || async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Bytes::from(vec![7u8; 100])
        };
        let mut first = Box::pin(encodings.awaited(SLOW, slow));
        assert!((&mut first).now_or_never().is_none(), "still being made");
        let (first, second) = tokio::join!(
            first,
            encodings.awaited(SLOW, || async { unreachable!("awaits the first") })
        );
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(encodings.held_bytes(), 100);
        assert_eq!(AwaitedSlot::new(15).offset(1), None);
        assert_eq!(AwaitedSlot::new(2).offset(1), Some(SLOW));
    }
}
