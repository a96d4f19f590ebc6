//! The poll source: one task per topic instance GETs the backend resource conditionally and
//! publishes only real changes.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::client::{Traffic, UpstreamClient, UpstreamError, UpstreamResponse, Validators};
use super::ignore_fields::{hash_without, FieldPattern};
use super::sink::{Continuity, Sink, SinkError};
use crate::hub::{Payload, Topic};
use crate::metrics::METRICS;

/// What one poll response means for the topic.
#[derive(Debug)]
pub enum Observation {
    /// New content: publish it.
    Changed(Payload),
    /// `304`, or the same bytes again.
    Unchanged,
    /// Not usable; keep serving the last good state.
    Failed(String),
}

/// The change detector: validators for the next request and a hash of the last content.
#[derive(Debug, Default)]
pub struct ChangeDetector {
    validators: Validators,
    last_hash: Option<u64>,
    event: Option<Arc<str>>,
    /// `ignore_fields`: JSON Pointers left out of the hash (empty: the body's bytes count).
    ignore: Arc<[FieldPattern]>,
}

impl ChangeDetector {
    pub fn new(event: Option<Arc<str>>) -> Self {
        ChangeDetector {
            event,
            ..ChangeDetector::default()
        }
    }

    /// Leaves `ignore` out of change detection (the topic's `ignore_fields`).
    pub fn ignoring(mut self, ignore: Arc<[FieldPattern]>) -> Self {
        self.ignore = ignore;
        self
    }

    /// Continues from what a previous poller (maybe on another sidecar) last saw, so the
    /// first request is conditional and an unchanged body is not published again.
    pub fn resume_from(&mut self, continuity: &Continuity) {
        self.validators = Validators {
            etag: continuity.etag.clone(),
            last_modified: continuity.last_modified.clone(),
        };
        self.last_hash = continuity.content_hash;
    }

    /// What a successor needs to continue from here.
    pub fn continuity(&self) -> Continuity {
        Continuity {
            etag: self.validators.etag.clone(),
            last_modified: self.validators.last_modified.clone(),
            content_hash: self.last_hash,
            last_event_id: None,
        }
    }

    /// The last change could not be published: forget it, so the next poll offers it again.
    pub fn forget_last(&mut self) {
        self.last_hash = None;
        self.validators = Validators::default();
    }

    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    pub fn observe(&mut self, response: UpstreamResponse) -> Observation {
        match response.meta.status {
            304 => Observation::Unchanged,
            200..=299 => {
                if let Some(problem) = garbage(&response) {
                    return Observation::Failed(problem);
                }
                let hash = match state_hash(
                    response.meta.content_type.as_deref(),
                    &response.body,
                    &self.ignore,
                ) {
                    Ok(hash) => hash,
                    // Checked before the validators move: the last good state stays current.
                    Err(problem) => return Observation::Failed(problem),
                };
                // Validators are remembered even when the content hash says "same", so the
                // next request is conditional on what the backend now considers current.
                self.validators = response.meta.validators;
                if self.last_hash == Some(hash) {
                    return Observation::Unchanged;
                }
                self.last_hash = Some(hash);
                Observation::Changed(Payload {
                    event: self.event.clone(),
                    content_type: response.meta.content_type.map(Arc::from),
                    data: response.body,
                })
            }
            status => Observation::Failed(format!("backend answered {status}")),
        }
    }
}

/// What "the backend's state changed" is judged by: the content type and the body. Also
/// computed from a message already held (a cluster sidecar starting a poller alone), so the
/// same state is never published twice.
pub fn content_hash(content_type: Option<&str>, body: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    content_type.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
}

/// [`content_hash`] with `ignore` (a topic's `ignore_fields`) left out: the body must then be
/// JSON, and only what is not ignored counts.
pub fn state_hash(content_type: Option<&str>, body: &[u8], ignore: &[FieldPattern]) -> Result<u64, String> {
    if ignore.is_empty() {
        return Ok(content_hash(content_type, body));
    }
    let mut hasher = DefaultHasher::new();
    hash_without(content_type, body, ignore, &mut hasher)?;
    Ok(hasher.finish())
}

/// A body that says it is JSON but does not parse is a broken response, not a new state.
fn garbage(response: &UpstreamResponse) -> Option<String> {
    let declared_json = response.meta.content_type.as_deref().is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    });
    if declared_json {
        if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&response.body) {
            return Some(format!("backend sent invalid JSON: {error}"));
        }
    }
    None
}

pub struct PollTask {
    pub client: Arc<UpstreamClient>,
    pub topic: Arc<Topic>,
    pub sink: Arc<dyn Sink>,
    /// Where the previous poller stopped (a cluster's new lease holder).
    pub resume: Continuity,
    /// Poll on the timer even when no local client holds the instance: in a cluster, the
    /// clients may be on other sidecars.
    pub on_timer: bool,
    pub url: String,
    /// SSE event name given to every message this source publishes.
    pub event: Option<Arc<str>>,
    /// The topic's `ignore_fields` (empty: every byte of the body counts).
    pub ignore_fields: Arc<[FieldPattern]>,
    pub interval: Duration,
    pub jitter: Duration,
    pub backoff: Backoff,
    pub stop: CancellationToken,
}

impl PollTask {
    pub async fn run(mut self) {
        let mut detector = ChangeDetector::new(self.event.clone()).ignoring(self.ignore_fields.clone());
        detector.resume_from(&self.resume);
        tracing::debug!(topic = %self.topic.key(), url = %self.url, "poller started");
        let mut demand = self.topic.watch_demand();
        loop {
            let started = tokio::time::Instant::now();
            self.topic.stats().poll_started(self.interval);
            // Requests from here on are answered by a later poll; earlier ones by this one.
            demand.borrow_and_update();
            let traffic = Traffic::Topic {
                held: self.on_timer || self.topic.is_held(),
            };
            let outcome = tokio::select! {
                _ = self.stop.cancelled() => break,
                outcome = self.client.get(&self.url, detector.validators(), &self.topic.key().forwarded, traffic) => outcome,
            };
            // The backend may ask for more room (Retry-After, Cache-Control: max-age), up to
            // `max_interval_ms`: a backend saying "a day" must not freeze the topic for a day.
            let min_interval = outcome
                .as_ref()
                .ok()
                .and_then(|r| r.meta.min_interval)
                .unwrap_or_default()
                .min(self.client.max_interval());
            let topic_name: &str = &self.topic.key().name;
            METRICS
                .upstream_duration
                .with_label_values(&[topic_name])
                .observe(started.elapsed().as_secs_f64());
            self.topic.stats().upstream_answered(
                outcome.as_ref().ok().map(|r| r.meta.status),
                started.elapsed(),
                matches!(outcome, Err(UpstreamError::CircuitOpen(_))),
            );
            let error_outcome = match &outcome {
                Err(UpstreamError::Timeout(_)) => Some("timeout"),
                Err(UpstreamError::CircuitOpen(_)) => Some("circuit_open"),
                Err(_) => Some("error"),
                Ok(_) => None,
            };
            let observation = match outcome {
                Ok(response) => detector.observe(response),
                Err(error) => Observation::Failed(error.to_string()),
            };
            let label = error_outcome.unwrap_or(match &observation {
                Observation::Changed(_) => "changed",
                Observation::Unchanged => "unchanged",
                Observation::Failed(_) => "error",
            });
            METRICS
                .upstream_requests
                .with_label_values(&[topic_name, label])
                .inc();
            let delay = match observation {
                Observation::Changed(payload) => {
                    self.recovered();
                    let continuity = detector.continuity();
                    let version = continuity.content_hash.map(|hash| format!("{hash:016x}"));
                    match self.sink.publish(payload, version, &continuity).await {
                        Ok(()) => self.next_interval(),
                        Err(SinkError::Fenced) => break,
                        Err(SinkError::Unavailable(reason)) => {
                            tracing::warn!(topic = %self.topic.key(), "a change was not published, retrying: {reason}");
                            detector.forget_last();
                            self.backoff.next_delay()
                        }
                    }
                }
                Observation::Unchanged => {
                    self.recovered();
                    self.next_interval()
                }
                Observation::Failed(reason) => {
                    let delay = self.backoff.next_delay();
                    // One line per state change: the first failure says "backing off"; the
                    // retries that follow are debug-level.
                    if self.backoff.failures() == 1 {
                        tracing::warn!(
                            topic = %self.topic.key(),
                            url = %self.url,
                            retry_in_ms = delay.as_millis() as u64,
                            "poll failed, backing off and serving the last good state: {reason}"
                        );
                    } else {
                        tracing::debug!(
                            topic = %self.topic.key(),
                            failures = self.backoff.failures(),
                            retry_in_ms = delay.as_millis() as u64,
                            "poll failed again: {reason}"
                        );
                    }
                    self.sink.failing(reason);
                    self.topic.stats().backing_off(delay);
                    delay
                }
            }
            .max(min_interval);
            // The interval runs from the start of this request, so the time spent waiting for
            // the budget (or for the backend) does not add to every period.
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep_until(started + delay) => {}
            }
            // Nobody held: an instance only short polls (or its linger) keep alive is polled
            // on demand, at most once per interval, not on its own timer for the whole
            // linger. A short poll that came in since the last request started is demand.
            if !self.on_timer && !self.topic.is_held() {
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    changed = demand.changed() => if changed.is_err() { break },
                }
            }
        }
        tracing::debug!(topic = %self.topic.key(), "poller stopped");
    }

    /// A good answer: resets the backoff, and says so once if the upstream was failing.
    fn recovered(&mut self) {
        if self.backoff.failures() > 0 {
            tracing::info!(
                topic = %self.topic.key(),
                failures = self.backoff.failures(),
                "upstream recovered"
            );
        }
        self.sink.healthy();
        self.backoff.reset();
    }

    fn next_interval(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.interval;
        }
        let spread = self.jitter.as_secs_f64();
        let offset = rand::random_range(-spread..spread);
        Duration::from_secs_f64((self.interval.as_secs_f64() + offset).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::client::ResponseMeta;
    use bytes::Bytes;

    fn response(status: u16, etag: Option<&str>, content_type: &str, body: &'static str) -> UpstreamResponse {
        UpstreamResponse {
            meta: ResponseMeta {
                status,
                validators: Validators {
                    etag: etag.map(str::to_string),
                    last_modified: None,
                },
                content_type: Some(content_type.to_string()),
                min_interval: None,
            },
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn only_changes_become_messages() {
        let mut detector = ChangeDetector::new(None);
        let first = detector.observe(response(200, Some("\"a\""), "application/json", "{\"p\":1}"));
        assert!(matches!(first, Observation::Changed(_)));
        assert_eq!(detector.validators().etag.as_deref(), Some("\"a\""));
        assert!(matches!(
            detector.observe(response(304, None, "application/json", "")),
            Observation::Unchanged
        ));
        // No validators, same bytes: the hash decides.
        assert!(matches!(
            detector.observe(response(200, None, "application/json", "{\"p\":1}")),
            Observation::Unchanged
        ));
        assert!(matches!(
            detector.observe(response(200, None, "application/json", "{\"p\":2}")),
            Observation::Changed(_)
        ));
    }

    #[test]
    fn ignored_fields_are_no_change_and_a_non_json_body_is_a_failure() {
        let ignore: Arc<[FieldPattern]> = Arc::from(vec![FieldPattern::parse("/updated_at").expect("valid")]);
        let mut detector = ChangeDetector::new(None).ignoring(ignore);
        let first = detector.observe(response(
            200,
            Some("\"a\""),
            "application/json",
            r#"{"p":1,"updated_at":1}"#,
        ));
        assert!(matches!(first, Observation::Changed(_)));
        assert!(matches!(
            detector.observe(response(
                200,
                Some("\"a2\""),
                "application/json",
                r#"{"updated_at":2,"p":1}"#
            )),
            Observation::Unchanged
        ));
        assert!(matches!(
            detector.observe(response(200, Some("\"b\""), "text/plain", "not json")),
            Observation::Failed(_)
        ));
        assert_eq!(
            detector.validators().etag.as_deref(),
            Some("\"a2\""),
            "a failure does not move validators"
        );
        match detector.observe(response(
            200,
            None,
            "application/json",
            r#"{"p":2,"updated_at":3}"#,
        )) {
            Observation::Changed(payload) => assert_eq!(&payload.data[..], br#"{"p":2,"updated_at":3}"#),
            other => panic!("a real change: {other:?}"),
        }
    }

    #[test]
    fn errors_and_garbage_are_failures_that_keep_the_last_state() {
        let mut detector = ChangeDetector::new(None);
        detector.observe(response(200, Some("\"a\""), "application/json", "{}"));
        assert!(matches!(
            detector.observe(response(500, None, "text/plain", "oops")),
            Observation::Failed(_)
        ));
        assert!(matches!(
            detector.observe(response(
                200,
                Some("\"b\""),
                "application/json; charset=utf-8",
                "{garbage"
            )),
            Observation::Failed(_)
        ));
        assert_eq!(
            detector.validators().etag.as_deref(),
            Some("\"a\""),
            "garbage does not move validators"
        );
        assert!(matches!(
            detector.observe(response(200, None, "text/plain", "{not json but not declared")),
            Observation::Changed(_)
        ));
    }
}
