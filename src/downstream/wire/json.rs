//! The JSON envelopes of the polling transports (and the WebSocket `json` envelope):
//! `{"id","event","data"}` for a state or event, `{"id","event","patch"}` for a patch.

use bytes::{BufMut, Bytes, BytesMut};

use super::message_slot;
use crate::hub::{Cursor, Message};

/// The JSON entry of `message`, made once per message.
pub fn entry(message: &Message) -> Bytes {
    message.encodings.inline(message_slot::JSON_ENTRY, || {
        encode_entry(&message.cursor, message.event.as_deref(), &message.data)
    })
}

/// Encodes the JSON envelope. A payload that is itself JSON is embedded as is; UTF-8 text
/// becomes a JSON string; anything else is base64 with `"encoding":"base64"`.
pub fn encode_entry(cursor: &Cursor, event: Option<&str>, data: &[u8]) -> Bytes {
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

/// `{"id":…,"event":…,"patch":[…]}`: the JSON envelope of a patch, next to the full state's
/// `{"id","event","data"}`. `event` is the topic's event name, as on the full state.
pub fn encode_patch_entry(cursor: Cursor, event: &str, patch: &[u8]) -> Bytes {
    let mut entry = BytesMut::with_capacity(patch.len() + 64);
    entry.put_slice(b"{\"id\":\"");
    entry.put_slice(cursor.to_string().as_bytes());
    entry.put_slice(b"\",\"event\":");
    entry.put_slice(json_string(event).as_bytes());
    entry.put_slice(b",\"patch\":");
    entry.put_slice(patch);
    entry.put_u8(b'}');
    entry.freeze()
}

fn json_string(text: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(seq: u64) -> Cursor {
        Cursor::test(seq)
    }

    #[test]
    fn json_entry_embeds_json_wraps_text_and_base64s_binary() {
        let entry = encode_entry(&cursor(3), None, b"{\"a\": [1, 2]}");
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-3","event":"message","data":{"a": [1, 2]}}"#
        );
        let entry = encode_entry(&cursor(4), Some("t"), b"he said \"hi\"\n");
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-4","event":"t","data":"he said \"hi\"\n"}"#
        );
        let entry = encode_entry(&cursor(5), None, &[0xff, 0x00]);
        assert_eq!(
            &entry[..],
            br#"{"id":"1000000-5","event":"message","data":"/wA=","encoding":"base64"}"#
        );
        let entry = encode_entry(&cursor(6), None, b"");
        let parsed: serde_json::Value = serde_json::from_slice(&entry).expect("valid JSON");
        assert_eq!(parsed["data"], "");
    }

    #[test]
    fn the_patch_envelope_is_json_with_the_topic_event_name() {
        let entry = encode_patch_entry(cursor(3), "price", br#"[{"op":"replace","path":"/p","value":2}]"#);
        let parsed: serde_json::Value = serde_json::from_slice(&entry).expect("JSON");
        assert_eq!(parsed["id"], "1000000-3");
        assert_eq!(parsed["event"], "price");
        assert_eq!(parsed["patch"][0]["op"], "replace");
        assert!(parsed.get("data").is_none());
    }
}
