//! Every process-wide counter, defined in one place. Modules bump them; the admin endpoint
//! (and tests) read them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// permessage-deflate compressions of hub messages (one per message, not per client).
pub static WEBSOCKET_DEFLATE_COMPRESSIONS: Counter = Counter::new();
/// WebSocket frames written from the hub's pre-encoded bytes.
pub static WEBSOCKET_FRAMES_SENT: Counter = Counter::new();
/// Client messages forwarded to a topic's `inbound` URL.
pub static WEBSOCKET_INBOUND_FORWARDED: Counter = Counter::new();
