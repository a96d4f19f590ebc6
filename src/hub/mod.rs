//! The hub: topics, cursors, history, latest state and subscribers. It knows nothing of
//! HTTP or pingora; upstreams publish into it and downstream transports subscribe to it.

pub mod cursor;
pub mod delta;
pub mod events;
pub mod history;
pub mod message;
pub mod registry;
pub mod stats;
pub mod subscriber;
pub mod topic;
pub mod topic_key;
pub mod websocket_frame;

pub use cursor::{Cursor, CursorParseError, Epoch};
pub use delta::{Delta, DeltaCursor, DeltaStep};
pub use events::HubEvents;
pub use history::HistoryLimits;
pub use message::{Message, Payload};
pub use registry::{Registry, UpstreamLauncher};
pub use stats::{TopicStats, Transport};
pub use subscriber::{CloseReason, Delivery, OverflowPolicy, QueueLimits};
pub use topic::{Mode, Published, Resume, Subscribe, Subscription, Topic, TopicSettings};
pub use topic_key::TopicKey;
pub use websocket_frame::Envelope;
