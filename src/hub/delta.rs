//! JSON Patch deltas of a state topic (`deltas = true`).
//!
//! Each new state is diffed against the previous one **once, at publish** (the RFC 6902
//! patch rides on the [`Message`] and is shared by every subscriber that asked for deltas).
//! A patch that is not smaller than the document is dropped: the full state costs no more.
//! Each delta subscriber has a [`DeltaCursor`]: the cursor of the state it holds, which
//! decides whether the next message can go as a patch (its base is that state) or must go
//! whole (the client skipped messages, e.g. under `conflate`). Transports encode what it
//! says; the hub knows nothing of their framing.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::Value;

use super::cursor::Cursor;
use super::encodings::Encodings;
use super::message::Message;

/// The patch from the previous state to a message's state.
#[derive(Debug)]
pub struct Delta {
    /// The cursor of the state the patch applies to (the message just before).
    pub base: Cursor,
    /// The RFC 6902 patch as compact JSON (one line).
    pub patch: Bytes,
    /// The transports' encodings of the patch, made by the first client that needs each
    /// and shared by the others (encode once, write many).
    pub encodings: Encodings,
}

impl Delta {
    pub fn new(base: Cursor, patch: Bytes) -> Self {
        Delta {
            base,
            patch,
            encodings: Encodings::default(),
        }
    }
}

/// The parsed latest state of a topic with deltas, which the next state is diffed against.
#[derive(Debug)]
pub struct DeltaSource {
    topic: Arc<str>,
    latest: Option<(Cursor, Arc<Value>)>,
}

impl DeltaSource {
    pub fn new(topic: Arc<str>) -> Self {
        DeltaSource { topic, latest: None }
    }

    /// The delta from the previous state to `data` (the state at `cursor`), if both are JSON
    /// and the patch is smaller than `data`. Called once per message, in order.
    pub fn next(&mut self, cursor: Cursor, data: &[u8]) -> Option<Delta> {
        let document = serde_json::from_slice::<Value>(data).ok().map(Arc::new);
        let previous = std::mem::replace(&mut self.latest, document.map(|d| (cursor, d)));
        let (base, before) = previous?;
        let (_, after) = self.latest.as_ref()?;
        let patch = diff(&self.topic, "publish", &before, after, data.len())?;
        Some(Delta::new(base, patch))
    }

    /// History starts over (another epoch): the next state has nothing to be diffed against.
    pub fn clear(&mut self) {
        self.latest = None;
    }

    /// The parsed state at `cursor`, when it is the latest.
    pub fn document(&self, cursor: Cursor) -> Option<Arc<Value>> {
        self.latest
            .as_ref()
            .filter(|(at, _)| *at == cursor)
            .map(|(_, document)| document.clone())
    }
}

/// The patch from `before` to `after` (whose JSON text is `document_bytes` long) as compact
/// JSON, when it is smaller than the document. `kind` says what it was computed for
/// (`publish`: once per message; `resume`: once per resuming client).
pub fn diff(
    topic: &str,
    kind: &'static str,
    before: &Value,
    after: &Value,
    document_bytes: usize,
) -> Option<Bytes> {
    let patch = serde_json::to_vec(&json_patch::diff(before, after)).ok()?;
    if let Some(observer) = super::events::observer() {
        observer.delta_computed(topic, kind, patch.len(), document_bytes);
    }
    (patch.len() < document_bytes).then(|| Bytes::from(patch))
}

/// What to send a delta subscriber for one message.
#[derive(Debug)]
pub enum DeltaStep<'m> {
    /// The message's own patch: the client holds its base.
    Patch(&'m Delta),
    /// A patch made for this client alone (a resume from a state in history).
    ResumePatch(Bytes),
    /// The whole state, as without deltas.
    Full,
}

/// One delta subscriber's position: the cursor of the state it holds.
#[derive(Debug)]
pub struct DeltaCursor {
    topic: Arc<str>,
    holds: Mutex<Option<Cursor>>,
    /// A patch computed at subscription for the first message (a resume).
    resume: Mutex<Option<(Cursor, Bytes)>>,
}

impl DeltaCursor {
    pub fn new(topic: Arc<str>, holds: Option<Cursor>) -> Self {
        DeltaCursor {
            topic,
            holds: Mutex::new(holds),
            resume: Mutex::new(None),
        }
    }

    /// The first message (`at`) goes as this patch.
    pub fn resume_with(&self, at: Cursor, patch: Bytes) {
        *self.resume.lock().unwrap_or_else(PoisonError::into_inner) = Some((at, patch));
    }

    /// The state the client holds, when it holds one.
    pub fn holds(&self) -> Option<Cursor> {
        *self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How `message` goes to this client; the client holds its state afterwards.
    pub fn step<'m>(&self, message: &'m Message) -> DeltaStep<'m> {
        let held = self
            .holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(message.cursor);
        let resume = self
            .resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|(at, _)| *at == message.cursor);
        let step = match (resume, message.delta.as_ref()) {
            (Some((_, patch)), _) => DeltaStep::ResumePatch(patch),
            (None, Some(delta)) if Some(delta.base) == held => DeltaStep::Patch(delta),
            _ => DeltaStep::Full,
        };
        let patch_bytes = match &step {
            DeltaStep::Patch(delta) => Some(delta.patch.len()),
            DeltaStep::ResumePatch(patch) => Some(patch.len()),
            DeltaStep::Full => None,
        };
        if let (Some(patch_bytes), Some(observer)) = (patch_bytes, super::events::observer()) {
            observer.delta_sent(&self.topic, patch_bytes, message.data.len());
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::message::Payload;
    use serde_json::json;

    fn cursor(seq: u64) -> Cursor {
        Cursor::test(seq)
    }

    fn message(seq: u64, value: &Value, source: &mut DeltaSource) -> Message {
        let data = Bytes::from(serde_json::to_vec(value).expect("serializable"));
        let delta = source.next(cursor(seq), &data);
        let mut message = Message::new(
            cursor(seq),
            Payload {
                data,
                ..Payload::default()
            },
        );
        message.delta = delta;
        message
    }

    #[test]
    fn consecutive_states_get_a_patch_that_applies() {
        let mut source = DeltaSource::new("t".into());
        let before = json!({"rows": [1, 2, 3], "name": "a long enough name to be worth a patch"});
        let after = json!({"rows": [1, 2, 4], "name": "a long enough name to be worth a patch"});
        assert!(
            message(1, &before, &mut source).delta.is_none(),
            "nothing before the first"
        );
        let second = message(2, &after, &mut source);
        let delta = second.delta.as_ref().expect("a patch");
        assert_eq!(delta.base, cursor(1));
        let patch: json_patch::Patch = serde_json::from_slice(&delta.patch).expect("a patch");
        let mut document = before.clone();
        json_patch::patch(&mut document, &patch).expect("applies");
        assert_eq!(document, after);
    }

    #[test]
    fn a_patch_not_smaller_than_the_document_is_dropped() {
        let mut source = DeltaSource::new("t".into());
        message(1, &json!({"a": 1}), &mut source);
        let second = message(2, &json!({"b": 2}), &mut source);
        assert!(second.delta.is_none(), "remove + add is longer than {{\"b\":2}}");
    }

    #[test]
    fn non_json_states_have_no_patch_and_clear_starts_over() {
        let mut source = DeltaSource::new("t".into());
        let data = Bytes::from_static(b"not json");
        assert!(source.next(cursor(1), &data).is_none());
        let long = json!({"text": "x".repeat(100)});
        let bytes = serde_json::to_vec(&long).expect("serializable");
        assert!(
            source.next(cursor(2), &bytes).is_none(),
            "the previous state is not JSON"
        );
        assert!(source.next(cursor(3), &bytes).is_some());
        source.clear();
        assert!(source.next(cursor(4), &bytes).is_none());
    }

    #[test]
    fn a_client_that_skipped_a_message_gets_the_full_state() {
        let mut source = DeltaSource::new("t".into());
        let document = |n: u64| json!({"n": n, "padding": "p".repeat(200)});
        let first = message(1, &document(1), &mut source);
        let second = message(2, &document(2), &mut source);
        let third = message(3, &document(3), &mut source);
        let client = DeltaCursor::new("t".into(), None);
        assert!(matches!(client.step(&first), DeltaStep::Full));
        assert!(matches!(client.step(&second), DeltaStep::Patch(_)));
        let skipper = DeltaCursor::new("t".into(), Some(cursor(1)));
        assert!(
            matches!(skipper.step(&third), DeltaStep::Full),
            "its base is 2, not 1"
        );
        let resumed = DeltaCursor::new("t".into(), Some(cursor(1)));
        resumed.resume_with(cursor(3), Bytes::from_static(b"[]"));
        assert!(matches!(resumed.step(&third), DeltaStep::ResumePatch(_)));
        assert_eq!(resumed.holds(), Some(cursor(3)));
    }
}
