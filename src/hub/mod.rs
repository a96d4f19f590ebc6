//! The hub: topics, cursors, history, latest state and subscribers. It knows nothing of
//! HTTP, pingora or any transport's framing; upstreams publish into it and downstream
//! transports subscribe to it and cache their encodings of each message in it.

pub mod cursor;
pub mod delta;
pub mod encodings;
pub mod events;
pub mod history;
pub mod message;
pub mod prefetch;
pub mod registry;
pub mod stats;
pub mod subscriber;
pub mod topic;
pub mod topic_key;

pub use cursor::{Cursor, CursorParseError, CursorText, Epoch};
pub use delta::{Delta, DeltaCursor, DeltaStep};
pub use events::HubEvents;
pub use history::HistoryLimits;
pub use message::{Message, Payload};
pub use registry::{Registry, UpstreamLauncher};
pub use stats::{TopicStats, Transport};
pub use subscriber::{CloseReason, Delivery, DirectSink, OverflowPolicy, QueueLimits};
pub use topic::{Mode, Published, Resume, Subscribe, Subscription, Topic, TopicSettings};
pub use topic_key::TopicKey;
