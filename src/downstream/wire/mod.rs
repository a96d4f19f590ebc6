//! The transports' wire encodings of hub messages: SSE events and their HTTP/1.1 chunks,
//! the JSON envelope of the polling transports, WebSocket frames (plain and deflated per
//! window size), and the same for JSON Patch deltas.
//!
//! Each encoding is made once per message by the first subscriber that needs it and kept
//! in the message's [`crate::hub::encodings::Encodings`] (or its patch's), in the slots
//! numbered here: every slot of a message has one meaning, so two transports can never
//! overwrite each other's bytes.

pub mod json;
pub mod sse;
pub mod websocket;

use crate::hub::encodings::{AwaitedSlot, InlineSlot};

/// Slots of a message's own encodings.
pub mod message_slot {
    use super::*;
    /// The SSE event (`id:`, `event:`, `data:` lines, blank line).
    pub const SSE_EVENT: InlineSlot = InlineSlot::new(0);
    /// The SSE event as one HTTP/1.1 chunk.
    pub const SSE_CHUNK: InlineSlot = InlineSlot::new(1);
    /// `{"id","event","data"}`.
    pub const JSON_ENTRY: InlineSlot = InlineSlot::new(2);
    /// The plain WebSocket frame of the raw payload, and of the JSON envelope.
    pub const WEBSOCKET_RAW: InlineSlot = InlineSlot::new(3);
    pub const WEBSOCKET_JSON: InlineSlot = InlineSlot::new(4);
    /// A long poll's `200` with this message alone, after the status line and the
    /// connection's own lines (see `response::single_event_answer`).
    pub const LONG_POLL_SINGLE: InlineSlot = InlineSlot::new(5);
    /// Deflated WebSocket frames, one per window size (9..=15 bits) from each of these on.
    pub const DEFLATED_RAW: AwaitedSlot = AwaitedSlot::new(0);
    pub const DEFLATED_JSON: AwaitedSlot = AwaitedSlot::new(super::websocket::WindowBits::COUNT);
}

/// Slots of a JSON Patch's encodings ([`crate::hub::Delta`]).
pub mod patch_slot {
    use super::*;
    /// `event: patch`.
    pub const SSE_EVENT: InlineSlot = InlineSlot::new(0);
    pub const SSE_CHUNK: InlineSlot = InlineSlot::new(1);
    /// The plain WebSocket frame of `{"id","event","patch"}`.
    pub const WEBSOCKET: InlineSlot = InlineSlot::new(2);
    /// Its deflated frames, one per window size.
    pub const DEFLATED: AwaitedSlot = AwaitedSlot::new(0);
}

/// Every window size of the last deflated range must still be a slot (checked at build).
const _: () = {
    assert!(message_slot::DEFLATED_JSON
        .offset(websocket::WindowBits::COUNT - 1)
        .is_some());
};
