//! Upstream: talks to the backend once per topic instance and publishes into the hub.

pub mod backoff;
pub mod budget;
pub mod circuit;
pub mod client;
pub mod event_stream;
pub mod ignore_fields;
pub mod poll;
pub mod sink;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{SourceSpec, TopicSpec, UpstreamSettings};
use crate::hub::{Topic, UpstreamLauncher};
use backoff::Backoff;
pub use client::{Backend, Traffic, UpstreamClient, UpstreamError};
use poll::PollTask;
use stream::StreamTask;

/// Starts the right source task for each new topic instance.
pub struct SourceLauncher {
    topics: std::sync::RwLock<HashMap<Arc<str>, TopicSpec>>,
    client: Arc<UpstreamClient>,
    settings: UpstreamSettings,
}

impl SourceLauncher {
    pub fn new(topics: &[TopicSpec], client: Arc<UpstreamClient>, settings: UpstreamSettings) -> Self {
        SourceLauncher {
            topics: std::sync::RwLock::new(topics.iter().map(|t| (t.name.clone(), t.clone())).collect()),
            client,
            settings,
        }
    }
}

impl SourceLauncher {
    /// New instances start from these specs (a reload).
    pub fn update(&self, topics: &[TopicSpec]) {
        *self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            topics.iter().map(|t| (t.name.clone(), t.clone())).collect();
    }
}

/// Where a source task starts: which sink, from which position, on which schedule.
pub struct SourceStart {
    pub sink: Arc<dyn sink::Sink>,
    pub resume: sink::Continuity,
    /// Poll on the timer even without local clients (a cluster's lease holder).
    pub on_timer: bool,
}

impl SourceLauncher {
    /// The spec new instances of topic `name` start from.
    pub fn spec(&self, name: &str) -> Option<TopicSpec> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Spawns the source task of `topic` (none for push topics), ending when `stop` fires.
    pub fn spawn_source(
        &self,
        topic: Arc<Topic>,
        stop: CancellationToken,
        start: SourceStart,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Some(spec) = self.spec(&topic.key().name) else {
            tracing::error!(topic = %topic.key(), "no source configured for topic");
            return None;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(topic = %topic.key(), "no runtime to run the source on");
            return None;
        };
        match &spec.source {
            SourceSpec::Poll(poll) => {
                let task = PollTask {
                    client: self.client.clone(),
                    sink: start.sink,
                    resume: start.resume,
                    on_timer: start.on_timer,
                    url: poll.url.render(&topic.key().params),
                    event: spec.event.clone(),
                    ignore_fields: spec.ignore_fields.clone(),
                    interval: poll.interval,
                    jitter: poll.jitter,
                    backoff: Backoff::new(self.settings.backoff_initial, self.settings.backoff_max),
                    topic,
                    stop,
                };
                Some(runtime.spawn(task.run()))
            }
            SourceSpec::Stream(stream) => {
                let task = StreamTask {
                    client: self.client.clone(),
                    sink: start.sink,
                    resume_event_id: start.resume.last_event_id,
                    url: stream.url.render(&topic.key().params),
                    event: spec.event.clone(),
                    idle_timeout: stream.idle_timeout,
                    backoff: Backoff::new(self.settings.backoff_initial, self.settings.backoff_max),
                    headers: topic.key().forwarded.clone(),
                    max_event_bytes: self.settings.max_body_bytes,
                    topic,
                    stop,
                };
                Some(runtime.spawn(task.run()))
            }
            // Messages arrive through the admin listener's /publish.
            SourceSpec::Push => None,
        }
    }
}

impl UpstreamLauncher for SourceLauncher {
    fn launch(&self, topic: Arc<Topic>, stop: CancellationToken) {
        let start = SourceStart {
            sink: Arc::new(sink::LocalSink(topic.clone())),
            resume: sink::Continuity::default(),
            on_timer: false,
        };
        self.spawn_source(topic, stop, start);
    }
}
