//! `?delta=json-patch`: a client of a topic with `deltas = true` asks for RFC 6902 patches
//! instead of full states. This is the transports' side: the request flag, and the wire
//! form of a patch on WebSocket and long poll (SSE frames its own in `sse`). The patch of a
//! message is encoded once per wire form and shared (see [`super::wire::patch_slot`]).

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::router::query_param;
use super::wire::json::encode_patch_entry;
use super::wire::patch_slot;
use super::wire::websocket::{deflate_message, encode_frame, WindowBits};
use crate::hub::{Cursor, DeltaCursor, DeltaStep, Message, Topic};
use crate::metrics::METRICS;

/// The one delta format there is.
pub const JSON_PATCH: &str = "json-patch";

/// The media type of a long-poll answer that is a patch (RFC 6902 §6).
pub const PATCH_CONTENT_TYPE: &str = "application/json-patch+json";

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

fn websocket_patch_frame(
    cursor: Cursor,
    event: &str,
    patch: &[u8],
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Bytes {
    let entry = encode_patch_entry(cursor, event, patch);
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
pub async fn websocket_frame(
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
            let encode =
                || websocket_patch_frame(message.cursor, event, &delta.patch, deflate, deflate_min_bytes);
            let deflated_slot = deflate.and_then(|window| patch_slot::DEFLATED.offset(window.index()));
            Some(match deflated_slot {
                // Patches are small by design: deflated inline, but cached per window.
                Some(slot) => delta.encodings.awaited(slot, || async { encode() }).await,
                None => delta.encodings.inline(patch_slot::WEBSOCKET, encode),
            })
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
