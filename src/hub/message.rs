//! A published message: its cursor, its payload and the cache of its wire forms, which the
//! transports fill on first use and every subscriber shares as `Bytes` (encode once, write
//! many). The hub knows none of those forms (see [`super::encodings`]).

use std::sync::Arc;

use bytes::Bytes;

use super::cursor::Cursor;
use super::delta::Delta;
use super::encodings::Encodings;

/// What an upstream hands to the hub: the payload before it has a cursor.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    /// Event name; `None` is the default `message` event.
    pub event: Option<Arc<str>>,
    /// The backend's content type, served again by the polling transports.
    pub content_type: Option<Arc<str>>,
    pub data: Bytes,
}

/// A message as every transport sees it: cursor assigned, wire forms made once on demand.
#[derive(Debug)]
pub struct Message {
    pub cursor: Cursor,
    pub event: Option<Arc<str>>,
    pub content_type: Option<Arc<str>>,
    pub data: Bytes,
    /// `deltas = true`: the JSON Patch from the previous state, when smaller than `data`.
    pub delta: Option<Delta>,
    /// The transports' encodings of this message, made by the first subscriber that needs
    /// each and shared by the others. Made outside the topic's lock, at delivery: a
    /// publish costs no encoding at all, and a form nobody asks for is never made.
    pub encodings: Encodings,
    /// When the hub took it from the upstream: freshness is measured from here at write time.
    pub received: tokio::time::Instant,
}

impl Message {
    pub fn new(cursor: Cursor, payload: Payload) -> Self {
        Message {
            cursor,
            event: payload.event,
            content_type: payload.content_type,
            data: payload.data,
            delta: None,
            encodings: Encodings::default(),
            received: tokio::time::Instant::now(),
        }
    }

    /// Bytes a queued message stands for in a subscriber's queue: its payload (and patch).
    /// Fixed for the message's life, so a queue adds and removes the same amount; the
    /// shared encodings are counted once, by the history ([`Message::weight`]).
    pub fn payload_bytes(&self) -> usize {
        self.data.len() + self.delta.as_ref().map_or(0, |delta| delta.patch.len())
    }

    /// Bytes this message keeps alive now: payload, patch and every encoding made so far
    /// (of the message and of its patch). Grows as transports encode it.
    pub fn weight(&self) -> usize {
        self.payload_bytes()
            + self.encodings.held_bytes()
            + self
                .delta
                .as_ref()
                .map_or(0, |delta| delta.encodings.held_bytes())
    }

    /// The event name with the SSE default filled in.
    pub fn event_name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::encodings::InlineSlot;

    #[test]
    fn the_weight_grows_with_the_encodings_made_and_the_queue_weight_does_not() {
        let cursor = Cursor::test(1);
        let message = Message::new(
            cursor,
            Payload {
                data: Bytes::from_static(b"0123456789"),
                ..Payload::default()
            },
        );
        assert_eq!((message.payload_bytes(), message.weight()), (10, 10));
        message
            .encodings
            .inline(InlineSlot::new(0), || Bytes::from(vec![0u8; 25]));
        assert_eq!((message.payload_bytes(), message.weight()), (10, 35));
    }
}
