//! The bounded history ring of one topic instance, and the cursor assignment it implies.
//!
//! This is the seam "who assigns the cursor and keeps history": the ring assigns it on a
//! single sidecar (`append`); with `[cluster]` Redis does, and the ring caches the shared
//! stream (`restart_at`, `append_at`).

use std::collections::VecDeque;
use std::sync::Arc;

use super::cursor::{Cursor, Epoch};
use super::delta::DeltaSource;
use super::message::{Message, Payload};

/// Limits of the ring. Whichever is reached first evicts the oldest message, but the newest
/// message is always kept, however large, so the latest state is never lost.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// What the history can say about a resume cursor.
#[derive(Debug)]
pub enum Replay {
    /// The cursor is known: these messages follow it, oldest first (maybe none).
    After(Vec<Arc<Message>>),
    /// The cursor is from another epoch, from the future, or older than what is kept.
    Unknown,
}

#[derive(Debug)]
pub struct History {
    epoch: Epoch,
    last_seq: u64,
    ring: VecDeque<Arc<Message>>,
    limits: HistoryLimits,
    /// Set while the ring continues another epoch's sequence under a new one (a clustered
    /// sidecar serving alone while Redis is gone): that epoch and its last seq. A client
    /// holding one of those cursors resumes without a reset; the new epoch marks everything
    /// after as this sidecar's own, so it is never mistaken for the cluster's.
    continues: Option<Cursor>,
    /// `deltas = true`: the parsed latest state, each new one is diffed against.
    deltas: Option<DeltaSource>,
}

impl History {
    pub fn new(epoch: Epoch, limits: HistoryLimits) -> Self {
        History {
            epoch,
            last_seq: 0,
            ring: VecDeque::new(),
            limits,
            continues: None,
            deltas: None,
        }
    }

    /// Every message appended from now on carries its JSON Patch from the previous state.
    pub fn with_deltas(mut self, topic: std::sync::Arc<str>) -> Self {
        self.deltas = Some(DeltaSource::new(topic));
        self
    }

    /// The parsed latest state at `cursor` (a topic with deltas), if it is the latest.
    pub fn latest_document(&self, cursor: Cursor) -> Option<Arc<serde_json::Value>> {
        self.deltas.as_ref()?.document(cursor)
    }

    /// The cursor of the newest message (`seq` 0 before the first one).
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            seq: self.last_seq,
        }
    }

    /// Assigns the next cursor, encodes the message once and keeps it.
    pub fn append(&mut self, payload: Payload) -> Arc<Message> {
        self.last_seq += 1;
        let cursor = self.cursor();
        // Diffed once here, for every subscriber that asked for deltas.
        let delta = self.deltas.as_mut().and_then(|d| d.next(cursor, &payload.data));
        let mut message = Message::new(cursor, payload);
        message.delta = delta;
        let message = Arc::new(message);
        self.ring.push_back(message.clone());
        // Weighed again now: the transports encode kept messages on first use (an SSE
        // chunk, a deflated frame per window size), so what each holds grows after it was
        // appended. One pass over at most `max_messages` lengths per publish.
        let mut bytes = self.bytes();
        while self.ring.len() > 1
            && (self.ring.len() > self.limits.max_messages || bytes > self.limits.max_bytes)
        {
            if let Some(evicted) = self.ring.pop_front() {
                bytes = bytes.saturating_sub(evicted.weight());
            }
        }
        message
    }

    pub fn latest(&self) -> Option<&Arc<Message>> {
        self.ring.back()
    }

    /// Appends a message whose cursor someone else assigned (the cluster's sequencer). Only
    /// the next `seq` of the same epoch is accepted: the caller orders and fills gaps first,
    /// so the ring never holds a hole.
    pub fn append_at(&mut self, cursor: Cursor, payload: Payload) -> Option<Arc<Message>> {
        if cursor.epoch != self.epoch || cursor.seq != self.last_seq + 1 {
            return None;
        }
        Some(self.append(payload))
    }

    /// Starts over at `top` of `epoch` with nothing kept (a cluster sync); the caller then
    /// appends what the shared log still holds.
    pub fn restart_at(&mut self, epoch: Epoch, top: u64) {
        self.epoch = epoch;
        self.continues = None;
        self.last_seq = top;
        self.ring.clear();
        if let Some(deltas) = &mut self.deltas {
            deltas.clear();
        }
    }

    /// Goes on under `epoch` from here: the kept messages stay, the next one is `top + 1` of
    /// `epoch`, and a cursor of the current epoch up to `top` stays valid (see `continues`).
    pub fn continue_as(&mut self, epoch: Epoch) {
        if self.continues.is_none() {
            self.continues = Some(self.cursor());
        }
        self.epoch = epoch;
    }

    /// Whether the ring has gone on under its own epoch since [`History::continue_as`]
    /// (`false` when nothing was appended since, or it never did).
    pub fn diverged(&self) -> bool {
        self.continues.is_some_and(|from| self.last_seq > from.seq)
    }

    /// Back to the epoch that [`History::continue_as`] left, when nothing was appended under
    /// the new one: the two are then the same sequence. `false` when it cannot.
    pub fn resume_continued(&mut self) -> bool {
        match self.continues {
            Some(from) if from.seq == self.last_seq => {
                self.epoch = from.epoch;
                self.continues = None;
                true
            }
            _ => false,
        }
    }

    /// A cursor of the epoch this ring continues (see `continues`) in the current epoch.
    fn current(&self, cursor: Cursor) -> Cursor {
        match self.continues {
            Some(from) if cursor.epoch == from.epoch && cursor.seq <= from.seq => Cursor {
                epoch: self.epoch,
                seq: cursor.seq,
            },
            _ => cursor,
        }
    }

    /// The message at `cursor` itself, while the ring still keeps it.
    pub fn at(&self, cursor: Cursor) -> Option<&Arc<Message>> {
        let cursor = self.current(cursor);
        if cursor.epoch != self.epoch || cursor.seq > self.last_seq {
            return None;
        }
        let oldest_kept = self.ring.front()?.cursor.seq;
        let index = usize::try_from(cursor.seq.checked_sub(oldest_kept)?).ok()?;
        self.ring.get(index).filter(|m| m.cursor.seq == cursor.seq)
    }

    /// Everything after `cursor`, or `Unknown` when the ring cannot answer without a gap.
    pub fn after(&self, cursor: Cursor) -> Replay {
        let cursor = self.current(cursor);
        if cursor.epoch != self.epoch || cursor.seq > self.last_seq {
            return Replay::Unknown;
        }
        let oldest_kept = self.ring.front().map_or(self.last_seq + 1, |m| m.cursor.seq);
        // The client must already have everything before the oldest kept message.
        if cursor.seq + 1 < oldest_kept {
            return Replay::Unknown;
        }
        let skip = (cursor.seq + 1 - oldest_kept) as usize;
        Replay::After(self.ring.iter().skip(skip).cloned().collect())
    }

    /// Every message still kept, oldest first.
    pub fn all(&self) -> Vec<Arc<Message>> {
        self.ring.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes the kept messages hold now, with every encoding made of them so far.
    pub fn bytes(&self) -> usize {
        self.ring.iter().map(|message| message.weight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn payload(text: &'static str) -> Payload {
        Payload {
            data: Bytes::from_static(text.as_bytes()),
            ..Payload::default()
        }
    }

    fn seqs(replay: Replay) -> Option<Vec<u64>> {
        match replay {
            Replay::After(messages) => Some(messages.iter().map(|m| m.cursor.seq).collect()),
            Replay::Unknown => None,
        }
    }

    fn history(max_messages: usize, max_bytes: usize) -> History {
        History::new(
            Epoch::random(),
            HistoryLimits {
                max_messages,
                max_bytes,
            },
        )
    }

    #[test]
    fn seq_grows_by_one_and_replay_follows_the_cursor() {
        let mut history = history(10, 1 << 20);
        let zero = history.cursor();
        assert_eq!(zero.seq, 0);
        for text in ["a", "b", "c"] {
            history.append(payload(text));
        }
        assert_eq!(seqs(history.after(zero)), Some(vec![1, 2, 3]));
        let at_two = Cursor { seq: 2, ..zero };
        assert_eq!(seqs(history.after(at_two)), Some(vec![3]));
        assert_eq!(seqs(history.after(history.cursor())), Some(vec![]));
    }

    #[test]
    fn cursors_from_another_epoch_or_the_future_are_unknown() {
        let mut history = history(10, 1 << 20);
        history.append(payload("a"));
        let future = Cursor {
            seq: 5,
            ..history.cursor()
        };
        assert!(seqs(history.after(future)).is_none());
        let other_epoch = Cursor {
            epoch: Epoch::from_raw(1),
            seq: 1,
        };
        assert!(seqs(history.after(other_epoch)).is_none());
    }

    #[test]
    fn continuing_under_a_new_epoch_keeps_old_cursors_valid_up_to_the_switch() {
        let mut history = history(10, 1 << 20);
        let zero = history.cursor();
        history.append(payload("a"));
        history.append(payload("b"));
        let before = history.cursor();
        let local = Epoch::from_raw(7);
        history.continue_as(local);
        assert!(!history.diverged());
        history.append(payload("c"));
        assert!(history.diverged());
        assert_eq!(history.cursor(), Cursor { epoch: local, seq: 3 });
        // Old cursors up to the switch resume without a reset; beyond it they are another
        // sequence (the cluster went on without this sidecar) and are unknown.
        assert_eq!(seqs(history.after(zero)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(history.after(before)), Some(vec![3]));
        assert!(seqs(history.after(Cursor { seq: 3, ..before })).is_none());
        // Something was appended under the new epoch: there is no way back.
        assert!(!history.resume_continued());
        history.restart_at(Epoch::from_raw(9), 0);
        assert!(
            seqs(history.after(before)).is_none(),
            "a restart forgets the old epoch"
        );
    }

    #[test]
    fn nothing_appended_under_the_new_epoch_goes_back_to_the_old_one() {
        let mut history = history(10, 1 << 20);
        history.append(payload("a"));
        let before = history.cursor();
        history.continue_as(Epoch::from_raw(7));
        history.continue_as(Epoch::from_raw(8));
        assert!(history.resume_continued());
        assert_eq!(history.cursor(), before, "the first epoch, not the second");
        assert!(!history.resume_continued());
    }

    #[test]
    fn evicts_by_count_and_reports_cursors_that_fell_off() {
        let mut history = history(3, 1 << 20);
        let zero = history.cursor();
        for _ in 0..5 {
            history.append(payload("x"));
        }
        assert_eq!(history.len(), 3);
        assert!(seqs(history.after(zero)).is_none(), "seq 1 and 2 are gone");
        let at_two = Cursor { seq: 2, ..zero };
        assert_eq!(seqs(history.after(at_two)), Some(vec![3, 4, 5]));
    }

    #[test]
    fn appends_at_an_assigned_cursor_only_in_order() {
        let mut history = history(10, 1 << 20);
        let epoch = Epoch::from_raw(36u64.pow(6) + 7);
        history.restart_at(epoch, 41);
        let at = |seq| Cursor { epoch, seq };
        assert!(
            history.append_at(at(43), payload("gap")).is_none(),
            "a hole is refused"
        );
        assert!(history.append_at(at(42), payload("a")).is_some());
        assert!(
            history.append_at(at(42), payload("again")).is_none(),
            "no duplicate"
        );
        assert_eq!(seqs(history.after(at(41))), Some(vec![42]));
        assert!(seqs(history.after(at(40))).is_none(), "before the restart point");
    }

    #[test]
    fn evicts_by_bytes_but_always_keeps_the_latest() {
        let mut history = history(100, 10);
        history.append(payload("0123456789"));
        history.append(payload("0123456789abcdef"));
        assert_eq!(history.len(), 1);
        assert_eq!(history.latest().map(|m| m.cursor.seq), Some(2));
        assert_eq!(history.bytes(), history.latest().map_or(0, |m| m.weight()));
    }

    #[test]
    fn encodings_made_after_the_append_count_against_the_byte_limit() {
        use crate::hub::encodings::InlineSlot;
        let mut history = history(100, 50);
        let first = history.append(payload("0123456789"));
        history.append(payload("0123456789"));
        assert_eq!((history.len(), history.bytes()), (2, 20));
        // A transport frames the first message: 35 bytes more held by the ring.
        first
            .encodings
            .inline(InlineSlot::new(1), || Bytes::from(vec![b'x'; 35]));
        assert_eq!(history.bytes(), 55);
        history.append(payload("0123456789"));
        assert_eq!(history.len(), 2, "the framed message no longer fits: evicted");
        assert_eq!(history.bytes(), 20);
    }
}
