//! A published message and its wire frames, encoded once per topic and shared by every
//! subscriber as `Bytes` (encode once, write many).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::OnceCell;

use super::cursor::Cursor;
use super::delta::Delta;
use super::websocket_frame::{deflated_frame, encode_frame, Envelope, WindowBits};

/// Deflated WebSocket frames: (raw, json) × window sizes 9..=15.
type DeflatedFrames = [OnceCell<Bytes>; 2 * WindowBits::COUNT];

/// What an upstream hands to the hub: the payload before it has a cursor.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    /// Event name; `None` is the default `message` event.
    pub event: Option<Arc<str>>,
    /// The backend's content type, served again by the polling transports.
    pub content_type: Option<Arc<str>>,
    pub data: Bytes,
}

/// A message as every transport sees it: cursor assigned, frames pre-encoded.
#[derive(Debug)]
pub struct Message {
    pub cursor: Cursor,
    pub event: Option<Arc<str>>,
    pub content_type: Option<Arc<str>>,
    pub data: Bytes,
    /// The complete SSE frame (`id:`, `event:`, `data:` lines and the blank line).
    pub sse_frame: Bytes,
    /// The JSON envelope `{"id","event","data"}` used by long-poll batches (and any
    /// transport that wraps messages in JSON).
    pub json_entry: Bytes,
    /// WebSocket frames, made on first use (topics nobody follows by WebSocket pay nothing)
    /// and then shared: indexed by envelope (raw, json).
    websocket_frames: [OnceLock<Bytes>; 2],
    /// Deflated WebSocket frames by envelope × window size, allocated when a client first
    /// needs one: each message is deflated once per window size its clients negotiated.
    /// Async cells: clients waiting for a large deflate (done off the runtime) await it
    /// rather than block their threads.
    deflated_frames: OnceLock<Box<DeflatedFrames>>,
    /// The SSE frame in its transport framing, made on first use.
    framed_sse: OnceLock<Bytes>,
    /// `deltas = true`: the JSON Patch from the previous state, when smaller than `data`.
    pub delta: Option<Delta>,
    /// When the hub took it from the upstream: freshness is measured from here at write time.
    pub received: tokio::time::Instant,
}

impl Message {
    pub fn new(cursor: Cursor, payload: Payload) -> Self {
        let sse_frame = encode_sse_frame(&cursor, payload.event.as_deref(), &payload.data);
        let json_entry = encode_json_entry(&cursor, payload.event.as_deref(), &payload.data);
        Message {
            cursor,
            event: payload.event,
            content_type: payload.content_type,
            data: payload.data,
            sse_frame,
            json_entry,
            websocket_frames: Default::default(),
            deflated_frames: OnceLock::new(),
            framed_sse: OnceLock::new(),
            delta: None,
            received: tokio::time::Instant::now(),
        }
    }

    /// The SSE frame wrapped by `frame` (the transport's framing, e.g. an HTTP/1.1 chunk),
    /// made by the first stream that asks and shared by all of them. One transport frames
    /// SSE, so one slot is enough.
    pub fn framed_sse(&self, frame: impl FnOnce(&[u8]) -> Bytes) -> Bytes {
        self.framed_sse.get_or_init(|| frame(&self.sse_frame)).clone()
    }

    /// The WebSocket frame of this message for `envelope`, deflated with the `deflate`
    /// window when there is one (and the payload is at least `deflate_min_bytes`). Encoded
    /// once per message and window size, whatever the number of clients.
    pub async fn websocket_frame(
        &self,
        envelope: Envelope,
        deflate: Option<WindowBits>,
        deflate_min_bytes: usize,
    ) -> Bytes {
        let (payload, slot) = match envelope {
            Envelope::Raw => (&self.data, 0),
            Envelope::Json => (&self.json_entry, 1),
        };
        // Only looked at when a frame is made, not on every delivery.
        let text = || envelope == Envelope::Json || std::str::from_utf8(payload).is_ok();
        match deflate.filter(|_| payload.len() >= deflate_min_bytes) {
            None => self.websocket_frames[slot]
                .get_or_init(|| encode_frame(payload, text(), false))
                .clone(),
            Some(window) => {
                let frames = self.deflated_frames.get_or_init(Default::default);
                frames[slot * WindowBits::COUNT + window.index()]
                    .get_or_init(|| deflated_frame(payload.clone(), text(), window))
                    .await
                    .clone()
            }
        }
    }

    /// Bytes this message keeps alive, for history and queue byte limits.
    pub fn weight(&self) -> usize {
        self.data.len()
            + self.sse_frame.len()
            + self.json_entry.len()
            + self.delta.as_ref().map_or(0, |delta| delta.patch.len())
    }

    /// The event name with the SSE default filled in.
    pub fn event_name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

/// Encodes one SSE event. Every line of the payload becomes its own `data:` line (CR, LF and
/// CRLF all end a line, as the SSE parser treats them), so multi-line JSON survives intact.
pub fn encode_sse_frame(cursor: &Cursor, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(data.len() + 48);
    frame.put_slice(b"id: ");
    frame.put_slice(cursor.to_string().as_bytes());
    frame.put_u8(b'\n');
    if let Some(event) = event {
        if event != "message" {
            frame.put_slice(b"event: ");
            frame.put_slice(event.as_bytes());
            frame.put_u8(b'\n');
        }
    }
    for line in split_lines(data) {
        frame.put_slice(b"data: ");
        frame.put_slice(line);
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    frame.freeze()
}

/// Encodes the JSON envelope. A payload that is itself JSON is embedded as is; UTF-8 text
/// becomes a JSON string; anything else is base64 with `"encoding":"base64"`.
pub fn encode_json_entry(cursor: &Cursor, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut entry = BytesMut::with_capacity(data.len() + 64);
    entry.put_slice(b"{\"id\":\"");
    entry.put_slice(cursor.to_string().as_bytes());
    entry.put_slice(b"\",\"event\":");
    entry.put_slice(json_string(event.unwrap_or("message")).as_bytes());
    entry.put_slice(b",\"data\":");
    let is_json = !data.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    if is_json {
        entry.put_slice(data);
    } else if let Ok(text) = std::str::from_utf8(data) {
        entry.put_slice(json_string(text).as_bytes());
    } else {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        entry.put_slice(json_string(&encoded).as_bytes());
        entry.put_slice(b",\"encoding\":\"base64\"");
    }
    entry.put_u8(b'}');
    entry.freeze()
}

fn json_string(text: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < data.len() {
        match data[index] {
            b'\n' => {
                lines.push(&data[start..index]);
                start = index + 1;
            }
            b'\r' => {
                lines.push(&data[start..index]);
                if data.get(index + 1) == Some(&b'\n') {
                    index += 1;
                }
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    lines.push(&data[start..]);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::cursor::Epoch;

    fn cursor(seq: u64) -> Cursor {
        Cursor {
            epoch: Epoch::from_raw(36u64.pow(6)),
            seq,
        }
    }

    #[test]
    fn sse_frame_has_id_event_and_one_data_line_per_line() {
        let frame = encode_sse_frame(&cursor(7), Some("price"), b"{\n  \"a\": 1\r\n}\rend");
        assert_eq!(
            &frame[..],
            b"id: 1000000-7\nevent: price\ndata: {\ndata:   \"a\": 1\ndata: }\ndata: end\n\n"
        );
    }

    #[test]
    fn json_entry_embeds_json_wraps_text_and_base64s_binary() {
        let entry = encode_json_entry(&cursor(3), None, b"{\"a\": [1, 2]}");
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-3","event":"message","data":{"a": [1, 2]}}"#
        );
        let entry = encode_json_entry(&cursor(4), Some("t"), b"he said \"hi\"\n");
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-4","event":"t","data":"he said \"hi\"\n"}"#
        );
        let entry = encode_json_entry(&cursor(5), None, &[0xff, 0x00]);
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-5","event":"message","data":"/wA=","encoding":"base64"}"#
        );
        let entry = encode_json_entry(&cursor(6), None, b"");
        let parsed: serde_json::Value = serde_json::from_slice(&entry).expect("valid JSON");
        assert_eq!(parsed["data"], "");
    }

    #[tokio::test]
    async fn websocket_frames_are_shared_per_window_and_large_deflates_leave_the_runtime() {
        use futures_util::FutureExt;
        let payload = |data: String| Payload {
            data: Bytes::from(data),
            ..Payload::default()
        };
        let small = Message::new(cursor(1), payload("small ".repeat(100)));
        let nine = WindowBits::new(9);
        let first = small
            .websocket_frame(Envelope::Raw, nine, 0)
            .now_or_never()
            .expect("a small payload is deflated inline");
        let again = small.websocket_frame(Envelope::Raw, nine, 0).await;
        assert_eq!(first.as_ptr(), again.as_ptr(), "one shared frame per window size");
        assert_eq!(first[0], 0xC1, "FIN, RSV1, text");
        let full = small
            .websocket_frame(Envelope::Raw, Some(WindowBits::FULL), 0)
            .await;
        assert_ne!(first.as_ptr(), full.as_ptr(), "another window, another frame");
        let plain = small.websocket_frame(Envelope::Raw, None, 0).await;
        assert_eq!(plain[0], 0x81);
        let below_minimum = small.websocket_frame(Envelope::Raw, nine, 10_000).await;
        assert_eq!(below_minimum.as_ptr(), plain.as_ptr());

        let big = Message::new(
            cursor(2),
            payload("big ".repeat(super::super::websocket_frame::DEFLATE_OFF_RUNTIME_BYTES / 4)),
        );
        let mut first = Box::pin(big.websocket_frame(Envelope::Raw, nine, 0));
        assert!(
            (&mut first).now_or_never().is_none(),
            "a large deflate is handed to the blocking pool, not done in this poll"
        );
        // A second client meanwhile awaits the same deflate instead of blocking or redoing it.
        let (first, second) = tokio::join!(first, big.websocket_frame(Envelope::Raw, nine, 0));
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(first[0], 0xC1);
        assert!(first.len() < big.data.len() / 10);
    }

    #[test]
    fn default_event_name_is_omitted_and_empty_data_still_sends_a_data_line() {
        let frame = encode_sse_frame(&cursor(1), Some("message"), b"");
        assert_eq!(&frame[..], b"id: 1000000-1\ndata: \n\n");
    }
}
