//! Liveness and readiness.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Response;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::text;
use crate::hub::Topic;

/// What `/ready` waits for: the first upstream result of every eager topic, or the grace time.
pub struct Readiness {
    started: Instant,
    grace: Duration,
    eager: Mutex<Vec<Arc<Topic>>>,
}

impl Readiness {
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Readiness {
            started: Instant::now(),
            grace,
            eager: Mutex::new(Vec::new()),
        })
    }

    pub fn watch(&self, topic: Arc<Topic>) {
        self.eager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(topic);
    }

    /// Eager topics still without a first upstream result.
    fn waiting(&self) -> Vec<String> {
        self.eager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|t| t.latest().is_none() && t.upstream_health().last_success.is_none())
            .map(|t| t.key().to_string())
            .collect()
    }
}

/// The process is up and serving this request.
pub fn live() -> Response<Vec<u8>> {
    text(200, "live")
}

/// Ready once the listeners answer (this one does) and every eager topic has its first
/// upstream result or the grace time has passed; not ready from the start of a drain, so the
/// orchestrator stops routing here first.
pub fn ready(shutdown: &CancellationToken, readiness: &Readiness) -> Response<Vec<u8>> {
    if shutdown.is_cancelled() {
        return text(503, "draining");
    }
    let waiting = readiness.waiting();
    if waiting.is_empty() {
        text(200, "ready")
    } else if readiness.started.elapsed() >= readiness.grace {
        text(
            200,
            &format!("ready (grace passed; still waiting for {})", waiting.join(", ")),
        )
    } else {
        text(
            503,
            &format!("waiting for the first upstream result of {}", waiting.join(", ")),
        )
    }
}
