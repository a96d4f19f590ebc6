//! `?delta=json-patch`: a client of a topic with `deltas = true` asks for RFC 6902 patches
//! instead of full states. This is the transports' side: the request flag, and the wire
//! form of a patch on WebSocket and long poll (SSE frames its own in `sse`). The patch of a
//! message is encoded once per encoding and shared (see [`Delta::encoded`]).

use bytes::{BufMut, Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::router::query_param;
use crate::hub::websocket_frame::{deflate_message, encode_frame, WindowBits};
use crate::hub::{Cursor, Delta, DeltaCursor, DeltaStep, Message, Topic};
use crate::metrics::METRICS;

/// The one delta format there is.
pub const JSON_PATCH: &str = "json-patch";

/// The media type of a long-poll answer that is a patch (RFC 6902 §6).
pub const PATCH_CONTENT_TYPE: &str = "application/json-patch+json";

/// Cache slots of a [`Delta`]'s encodings, one per wire form: SSE event, SSE chunk, plain
/// WebSocket frame, then one deflated WebSocket frame per window size.
pub const SLOT_SSE_EVENT: usize = 0;
pub const SLOT_SSE_CHUNK: usize = 1;
pub const SLOT_WEBSOCKET: usize = 2;
const SLOT_WEBSOCKET_DEFLATED: usize = 3;

/// Whether the request asks for patches, on a topic that offers them. On a topic without
/// `deltas` the flag is ignored (full states are always correct); an unknown format is the
/// client's mistake, said at once.
pub fn requested(request: &RequestHeader, topic_has_deltas: bool) -> std::result::Result<bool, String> {
    match query_param(request, "delta") {
        None => Ok(false),
        Some(format) if format == JSON_PATCH => Ok(topic_has_deltas),
        Some(format) => Err(format!(
            "unknown delta format {:?}: the one supported is delta={JSON_PATCH}",
            format.chars().take(64).collect::<String>()
        )),
    }
}

/// `{"id","event","patch":[…]}`: the JSON envelope of a patch, next to the full state's
/// `{"id","event","data"}`. `event` is the topic's event name, as on the full state.
pub fn json_patch_entry(cursor: Cursor, event: &str, patch: &[u8]) -> Bytes {
    let mut entry = BytesMut::with_capacity(patch.len() + 64);
    entry.put_slice(b"{\"id\":\"");
    entry.put_slice(cursor.to_string().as_bytes());
    entry.put_slice(b"\",\"event\":");
    entry.put_slice(
        serde_json::to_string(event)
            .unwrap_or_else(|_| "\"message\"".into())
            .as_bytes(),
    );
    entry.put_slice(b",\"patch\":");
    entry.put_slice(patch);
    entry.put_u8(b'}');
    entry.freeze()
}

fn websocket_patch_frame(
    cursor: Cursor,
    event: &str,
    patch: &[u8],
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Bytes {
    let entry = json_patch_entry(cursor, event, patch);
    // Patches are small by design (never larger than the document): deflated inline.
    if let Some(window) = deflate.filter(|_| entry.len() >= deflate_min_bytes) {
        if let Ok(compressed) = deflate_message(&entry, window) {
            return encode_frame(&compressed, true, true);
        }
    }
    encode_frame(&entry, true, false)
}

/// The WebSocket frame of `message` for a delta client (JSON envelope), or `None` when the
/// full state's own frame is what to send.
pub fn websocket_frame(
    deltas: &DeltaCursor,
    message: &Message,
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Option<Bytes> {
    let event = message.event_name();
    match deltas.step(message) {
        DeltaStep::Full => None,
        DeltaStep::ResumePatch(patch) => Some(websocket_patch_frame(
            message.cursor,
            event,
            &patch,
            deflate,
            deflate_min_bytes,
        )),
        DeltaStep::Patch(delta) => {
            // Whether it ends up deflated depends only on its size, the same for everyone.
            let slot = deflate.map_or(SLOT_WEBSOCKET, |window| SLOT_WEBSOCKET_DEFLATED + window.index());
            Some(delta.encoded(slot, |delta: &Delta| {
                websocket_patch_frame(message.cursor, event, &delta.patch, deflate, deflate_min_bytes)
            }))
        }
    }
}

/// The long-poll answer for a delta client holding the state at `base`: `200` with the
/// patch to `latest` (`application/json-patch+json`, `ETag` of `latest`), or `None` when the
/// full state must go instead (base not in history, or no smaller patch).
pub fn long_poll_patch(
    topic: &Topic,
    base: Cursor,
    latest: &Message,
) -> Result<Option<(ResponseHeader, Bytes)>> {
    let Some(patch) = topic.patch_from(base, latest) else {
        return Ok(None);
    };
    let name: &str = &topic.key().name;
    METRICS
        .delta_patch_bytes
        .with_label_values(&[name])
        .inc_by(patch.len() as u64);
    METRICS
        .delta_replaced_bytes
        .with_label_values(&[name])
        .inc_by(latest.data.len() as u64);
    // The state's headers (ETag, Age, stale flag), with the patch's own media type.
    let (mut response, _) = super::response::state_response(topic, latest)?;
    response.insert_header("Content-Type", PATCH_CONTENT_TYPE)?;
    Ok(Some((response, patch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_envelope_is_json_with_the_topic_event_name() {
        let cursor: Cursor = "1000000-3".parse().expect("cursor");
        let entry = json_patch_entry(cursor, "price", br#"[{"op":"replace","path":"/p","value":2}]"#);
        let parsed: serde_json::Value = serde_json::from_slice(&entry).expect("JSON");
        assert_eq!(parsed["id"], "1000000-3");
        assert_eq!(parsed["event"], "price");
        assert_eq!(parsed["patch"][0]["op"], "replace");
        assert!(parsed.get("data").is_none());
    }
}
