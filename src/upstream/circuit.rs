//! A circuit breaker per backend: after `failure_threshold` consecutive failures (across every
//! topic) the backend is left alone for a while, then probed by a single request. Per-topic
//! backoff spaces one topic's retries; the breaker stops a hundred topics from retrying a
//! dead backend a hundred times.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else waits for its verdict.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: State,
    open_for: Duration,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Mutex<Inner>,
    failure_threshold: u32,
    open_initial: Duration,
    open_max: Duration,
}

/// Whether a request may go to the backend now.
#[derive(Debug, PartialEq, Eq)]
pub enum Permission {
    Go,
    /// The circuit is open (or a probe is out): fail fast for this long at most.
    Refused(Duration),
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_initial: Duration, open_max: Duration) -> Self {
        CircuitBreaker {
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                open_for: open_initial,
            }),
            failure_threshold: failure_threshold.max(1),
            open_initial,
            open_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn permission(&self) -> Permission {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => Permission::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    inner.state = State::HalfOpen;
                    Permission::Go
                } else {
                    Permission::Refused(until - now)
                }
            }
            State::HalfOpen => Permission::Refused(inner.open_for),
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        if inner.state != (State::Closed { failures: 0 }) {
            if matches!(inner.state, State::HalfOpen) {
                tracing::info!("backend recovered: circuit closed");
            }
            inner.state = State::Closed { failures: 0 };
            inner.open_for = self.open_initial;
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { failures } if failures + 1 < self.failure_threshold => {
                inner.state = State::Closed {
                    failures: failures + 1,
                };
            }
            State::Closed { .. } => {
                inner.state = State::Open {
                    until: Instant::now() + inner.open_for,
                };
                tracing::warn!(
                    open_ms = inner.open_for.as_millis() as u64,
                    "backend failing: circuit opened"
                );
            }
            State::HalfOpen => {
                // The probe failed: stay away twice as long (up to the cap).
                inner.open_for = (inner.open_for * 2).min(self.open_max);
                inner.state = State::Open {
                    until: Instant::now() + inner.open_for,
                };
            }
            State::Open { .. } => {}
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.lock().state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_once_and_doubles_on_failed_probes() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(1), Duration::from_secs(4));
        for _ in 0..2 {
            assert_eq!(breaker.permission(), Permission::Go);
            breaker.record_failure();
        }
        assert!(!breaker.is_open());
        breaker.record_failure();
        assert!(matches!(breaker.permission(), Permission::Refused(_)));

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(breaker.permission(), Permission::Go, "one probe");
        assert!(matches!(breaker.permission(), Permission::Refused(_)), "only one");
        breaker.record_failure();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            matches!(breaker.permission(), Permission::Refused(_)),
            "now open for 2 s"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(breaker.permission(), Permission::Go);
        breaker.record_success();
        assert!(!breaker.is_open());
        assert_eq!(breaker.permission(), Permission::Go);
    }
}
