//! Where a source's messages go: straight into the local topic, or (with `[cluster]`)
//! through the cluster's sequencer, which fences a source that lost its lease.

use std::sync::Arc;

use async_trait::async_trait;

use crate::hub::{Payload, Topic};

/// What a source needs to continue exactly where the previous one stopped, on this sidecar
/// or another: the poll's validators and content hash, the stream's last event id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Continuity {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_hash: Option<u64>,
    pub last_event_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// This source no longer holds its topic's lease: it must stop, another sidecar polls.
    #[error("the lease was lost: another sidecar publishes this topic now")]
    Fenced,
    /// Nothing was published (e.g. Redis unreachable); retry later.
    #[error("cannot publish: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn topic(&self) -> &Arc<Topic>;

    /// Publishes one message. `version` names the backend state or event (content hash,
    /// upstream event id): a version already published is not published again, so a new
    /// holder re-reading an unchanged backend adds nothing. `continuity` is stored with it.
    async fn publish(
        &self,
        payload: Payload,
        version: Option<String>,
        continuity: &Continuity,
    ) -> Result<(), SinkError>;

    /// The backend answered well (clears the stale flag, everywhere it is shown).
    fn healthy(&self) {
        self.topic().record_upstream_success();
    }

    /// The backend failed: the data served is the last good one (stale).
    fn failing(&self, reason: String) {
        self.topic().record_upstream_failure(reason);
    }
}

/// A single sidecar: the topic assigns cursors itself.
pub struct LocalSink(pub Arc<Topic>);

#[async_trait]
impl Sink for LocalSink {
    fn topic(&self) -> &Arc<Topic> {
        &self.0
    }

    async fn publish(&self, payload: Payload, _: Option<String>, _: &Continuity) -> Result<(), SinkError> {
        self.0.publish(payload);
        Ok(())
    }
}
