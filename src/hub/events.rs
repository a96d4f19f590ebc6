//! What the hub reports about itself, through a trait: the hub counts, and whoever installed
//! an observer (the app installs the metrics module) records. This keeps the hub free of the
//! metrics registry, and unit tests of the hub need no metrics at all.

use std::sync::OnceLock;

use super::Topic;

/// Receives the hub's events. Every method has an empty default, so an observer implements
/// what it records. Calls are made on hot paths: they must not block.
pub trait HubEvents: Send + Sync {
    /// A message was published to `topic`; its subscribers' queues under `policy` dropped
    /// `dropped` messages and disconnected `disconnected` subscribers to make room.
    fn published(&self, _topic: &str, _policy: &'static str, _dropped: u64, _disconnected: u64) {}
    /// A subscriber resumed from a cursor: `outcome` is `replayed` or `reset`.
    fn resumed(&self, _topic: &Topic, _outcome: &'static str) {}
    /// A JSON Patch was computed for `topic` (`kind`: `publish`, once per message, or
    /// `resume`, once per resuming client): `patch_bytes` against a `document_bytes` state
    /// (not smaller: the full state goes instead).
    fn delta_computed(&self, _topic: &str, _kind: &'static str, _patch_bytes: usize, _document_bytes: usize) {
    }
    /// A patch of `patch_bytes` went to one client instead of a `full_bytes` state.
    fn delta_sent(&self, _topic: &str, _patch_bytes: usize, _full_bytes: usize) {}
}

static OBSERVER: OnceLock<&'static dyn HubEvents> = OnceLock::new();

/// Installs the process's observer. The first one stays: every app in a process (tests run
/// several) records into the same place.
pub fn install(observer: &'static dyn HubEvents) {
    let _ = OBSERVER.set(observer);
}

/// The installed observer, if any.
pub(crate) fn observer() -> Option<&'static dyn HubEvents> {
    OBSERVER.get().copied()
}
