//! The stream source: one long-lived GET per topic instance to a backend event stream
//! (`text/event-stream`, or `application/x-ndjson`); each upstream event is a message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::client::{Traffic, UpstreamClient};
use super::event_stream::{EventStreamParser, NdjsonParser, StreamEvent};
use super::sink::{Continuity, Sink, SinkError};
use crate::hub::{Payload, Topic};

pub struct StreamTask {
    pub client: Arc<UpstreamClient>,
    pub topic: Arc<Topic>,
    pub sink: Arc<dyn Sink>,
    /// The backend stream's last event id where the previous holder stopped (a cluster).
    pub resume_event_id: Option<String>,
    pub url: String,
    /// Event name for messages the upstream does not name.
    pub event: Option<Arc<str>>,
    pub idle_timeout: Duration,
    pub backoff: Backoff,
    pub headers: Vec<(String, String)>,
    /// A line or an event larger than this breaks the stream (`max_body_bytes`).
    pub max_event_bytes: usize,
    pub stop: CancellationToken,
}

/// How one connection ended.
enum End {
    Stopped,
    /// The stream was up and then ended or broke.
    Dropped(String),
    /// It never got going.
    Failed(String),
}

enum Format {
    EventStream(EventStreamParser),
    Ndjson(NdjsonParser),
}

impl StreamTask {
    pub async fn run(mut self) {
        // Remembered across reconnects, so the backend can resume after it.
        let mut last_event_id: Option<String> = self.resume_event_id.take();
        let mut retry_hint: Option<Duration> = None;
        loop {
            let end = self.connect_once(&mut last_event_id, &mut retry_hint).await;
            let delay = match end {
                End::Stopped => break,
                End::Dropped(reason) => {
                    tracing::info!(topic = %self.topic.key(), "upstream stream ended ({reason}); reconnecting");
                    // A stream that was healthy comes back after the backend's `retry:` (or
                    // the first backoff step), jittered so a fleet does not return at once.
                    let base = retry_hint.unwrap_or_else(|| self.backoff.ceiling());
                    base.mul_f64(rand::random_range(0.5..1.0))
                }
                End::Failed(reason) => {
                    let delay = self.backoff.next_delay().max(retry_hint.unwrap_or_default());
                    // One line per state change; further failed reconnects are debug-level.
                    if self.backoff.failures() == 1 {
                        tracing::warn!(
                            topic = %self.topic.key(),
                            url = %self.url,
                            retry_in_ms = delay.as_millis() as u64,
                            "upstream stream failed, backing off and serving the last good data: {reason}"
                        );
                    } else {
                        tracing::debug!(
                            topic = %self.topic.key(),
                            failures = self.backoff.failures(),
                            retry_in_ms = delay.as_millis() as u64,
                            "upstream stream failed again: {reason}"
                        );
                    }
                    self.sink.failing(reason);
                    self.topic.stats().backing_off(delay);
                    delay
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect_once(
        &mut self,
        last_event_id: &mut Option<String>,
        retry_hint: &mut Option<Duration>,
    ) -> End {
        let mut headers = self.headers.clone();
        headers.push(("Accept".into(), "text/event-stream, application/x-ndjson".into()));
        headers.push(("Cache-Control".into(), "no-cache".into()));
        if let Some(id) = last_event_id.as_deref() {
            headers.push(("Last-Event-ID".into(), id.to_string()));
        }
        let started = tokio::time::Instant::now();
        let opened = tokio::select! {
            _ = self.stop.cancelled() => return End::Stopped,
            opened = self.client.open_stream(&self.url, &headers, self.idle_timeout, Traffic::Topic {
                held: self.topic.is_held(),
            }) => opened,
        };
        self.topic.stats().upstream_answered(
            opened.as_ref().ok().map(|s| s.meta.status),
            started.elapsed(),
            matches!(opened, Err(super::UpstreamError::CircuitOpen(_))),
        );
        let mut stream = match opened {
            Ok(stream) if stream.meta.status == 200 => stream,
            Ok(stream) => {
                if let Some(min) = stream.meta.min_interval {
                    *retry_hint = Some(min.min(self.client.max_interval()));
                }
                return End::Failed(format!("backend answered {}", stream.meta.status));
            }
            Err(error) => return End::Failed(error.to_string()),
        };
        let ndjson = stream
            .meta
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("ndjson") || ct.contains("jsonl"));
        let mut format = if ndjson {
            Format::Ndjson(NdjsonParser::default().with_max_bytes(self.max_event_bytes))
        } else {
            Format::EventStream(
                EventStreamParser::resuming(last_event_id.clone()).with_max_bytes(self.max_event_bytes),
            )
        };
        // A `200` alone proves little: a broken or hostile backend may answer it and then
        // send an endless line. After failures, the stream counts as recovered (backoff
        // reset, stale cleared) only once it has delivered a whole event or line; the first
        // connection of a healthy topic counts at once (readiness waits for it).
        let mut proven = self.backoff.failures() == 0;
        if proven {
            self.sink.healthy();
        }
        loop {
            let chunk = tokio::select! {
                _ = self.stop.cancelled() => return End::Stopped,
                chunk = stream.next_chunk() => chunk,
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return End::Dropped("the backend closed the stream".into()),
                Err(error) => return End::Dropped(error.to_string()),
            };
            match &mut format {
                // Over the limit: a broken or hostile backend. The stream is dropped as a
                // failure (backoff, last good data kept) rather than buffered without end.
                Format::EventStream(parser) => {
                    let events = match parser.feed(&chunk) {
                        Ok(events) => events,
                        Err(too_large) => return End::Failed(too_large.to_string()),
                    };
                    if !events.is_empty() {
                        self.proven(&mut proven);
                    }
                    for event in events {
                        // The position moves only past what was published: a stream that
                        // cannot publish reconnects from the last event that was.
                        let id = event.id.clone();
                        if let Err(end) = self.publish_event(event, last_event_id.as_deref()).await {
                            return end;
                        }
                        *last_event_id = id;
                    }
                    if let Some(ms) = parser.retry_ms() {
                        // Capped like max-age: a `retry:` of a day must not freeze the topic.
                        *retry_hint = Some(Duration::from_millis(ms).min(self.client.max_interval()));
                    }
                }
                Format::Ndjson(parser) => {
                    let lines = match parser.feed(&chunk) {
                        Ok(lines) => lines,
                        Err(too_large) => return End::Failed(too_large.to_string()),
                    };
                    if !lines.is_empty() {
                        self.proven(&mut proven);
                    }
                    for line in lines {
                        match line {
                            Ok(json) => {
                                if let Err(end) =
                                    self.publish(None, json, "application/json", None, None).await
                                {
                                    return end;
                                }
                            }
                            Err(reason) => {
                                tracing::warn!(topic = %self.topic.key(), "skipped a line: {reason}")
                            }
                        }
                    }
                }
            }
            if proven {
                self.sink.healthy();
            }
        }
    }

    /// The stream delivered a whole event or line: it is healthy again.
    fn proven(&mut self, proven: &mut bool) {
        if *proven {
            return;
        }
        *proven = true;
        if self.backoff.failures() > 0 {
            tracing::info!(topic = %self.topic.key(), failures = self.backoff.failures(), "upstream stream recovered");
        }
        self.backoff.reset();
        self.sink.healthy();
    }

    async fn publish_event(&self, event: StreamEvent, previous_id: Option<&str>) -> Result<(), End> {
        let data = Bytes::from(event.data);
        let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        // Ids persist across events (EventSource rules): only a new id names this event.
        let version = event.id.clone().filter(|id| Some(id.as_str()) != previous_id);
        self.publish(event.event.map(Arc::from), data, content_type, version, event.id)
            .await
    }

    async fn publish(
        &self,
        event: Option<Arc<str>>,
        data: Bytes,
        content_type: &'static str,
        version: Option<String>,
        event_id: Option<String>,
    ) -> Result<(), End> {
        let payload = Payload {
            event: event.or_else(|| self.event.clone()),
            content_type: Some(Arc::from(content_type)),
            data,
        };
        let continuity = Continuity {
            last_event_id: event_id,
            ..Continuity::default()
        };
        match self.sink.publish(payload, version, &continuity).await {
            Ok(()) => Ok(()),
            Err(SinkError::Fenced) => Err(End::Stopped),
            Err(SinkError::Unavailable(reason)) => Err(End::Failed(reason)),
        }
    }
}
