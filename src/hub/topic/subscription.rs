//! A topic's subscription as its consumer holds it: the queue to receive from, and the
//! unsubscribe when it is dropped.

use std::sync::Arc;

use super::Topic;
use crate::hub::subscriber::{Delivery, DirectSink, SubscriberQueue};

/// A live subscription. Dropping it unsubscribes, which is how a client that goes away
/// frees everything it held.
#[derive(Debug)]
pub struct Subscription {
    pub(super) topic: Arc<Topic>,
    pub(super) id: u64,
    pub(super) queue: Arc<SubscriberQueue>,
}

impl Subscription {
    /// Waits for the next delivery (cancel-safe).
    pub async fn recv(&self) -> Delivery {
        self.queue.recv().await
    }

    pub fn try_recv(&self) -> Option<Delivery> {
        self.queue.try_recv()
    }

    /// See [`SubscriberQueue::set_sink`]: a transport that can write a message straight to
    /// its socket from the publishing task registers how.
    pub fn set_direct_sink(&self, sink: Arc<dyn DirectSink>) {
        self.queue.set_sink(sink);
    }

    /// See [`SubscriberQueue::claim`]: before any write of the consumer's own.
    pub fn claim(&self) {
        self.queue.claim();
    }

    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topic.unsubscribe(self.id);
    }
}
