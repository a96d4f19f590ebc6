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
#[derive(Debug)]
pub enum Permission<'a> {
    /// Go ahead, and report the outcome on the attempt.
    Go(Attempt<'a>),
    /// The circuit is open (or a probe is out): fail fast for this long at most.
    Refused(Duration),
}

impl Permission<'_> {
    pub fn is_go(&self) -> bool {
        matches!(self, Permission::Go(_))
    }
}

/// One admitted request. Its outcome is recorded through it; when it is dropped without one
/// (its future was cancelled: a reap, reload or drain during the request), a probe hands the
/// breaker back to Open-and-due, so the next request probes again instead of the breaker
/// waiting forever for a verdict that will never come.
#[derive(Debug)]
pub struct Attempt<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Attempt<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record_failure();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.probe_abandoned();
        }
    }
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

    pub fn permission(&self) -> Permission<'_> {
        let mut inner = self.lock();
        let attempt = |probe| Attempt {
            breaker: self,
            probe,
            settled: false,
        };
        match inner.state {
            State::Closed { .. } => Permission::Go(attempt(false)),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    inner.state = State::HalfOpen;
                    Permission::Go(attempt(true))
                } else {
                    Permission::Refused(until - now)
                }
            }
            State::HalfOpen => Permission::Refused(inner.open_for),
        }
    }

    /// Would a request be refused right now? (No state change: a cheap check before waiting
    /// for the budget; the real [`CircuitBreaker::permission`] comes right before sending.)
    pub fn refusing(&self) -> Option<Duration> {
        let inner = self.lock();
        match inner.state {
            State::Closed { .. } => None,
            State::Open { until } => until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero()),
            State::HalfOpen => Some(inner.open_for),
        }
    }

    /// The probe went away without a verdict: open again, due now, so the next request is
    /// the next probe. The open period is not doubled (nothing failed).
    fn probe_abandoned(&self) {
        let mut inner = self.lock();
        if inner.state == State::HalfOpen {
            inner.state = State::Open {
                until: Instant::now(),
            };
            tracing::debug!("circuit probe cancelled; the next request probes again");
        }
    }

    fn record_success(&self) {
        let mut inner = self.lock();
        if inner.state != (State::Closed { failures: 0 }) {
            if matches!(inner.state, State::HalfOpen) {
                tracing::info!("backend recovered: circuit closed");
            }
            inner.state = State::Closed { failures: 0 };
            inner.open_for = self.open_initial;
        }
    }

    fn record_failure(&self) {
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

    fn go(breaker: &CircuitBreaker) -> Attempt<'_> {
        match breaker.permission() {
            Permission::Go(attempt) => attempt,
            Permission::Refused(wait) => panic!("refused for {wait:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_once_and_doubles_on_failed_probes() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(1), Duration::from_secs(4));
        for _ in 0..2 {
            go(&breaker).failure();
        }
        assert!(!breaker.is_open());
        go(&breaker).failure();
        assert!(matches!(breaker.permission(), Permission::Refused(_)));

        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = go(&breaker);
        assert!(probe.is_probe(), "one probe");
        assert!(matches!(breaker.permission(), Permission::Refused(_)), "only one");
        probe.failure();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            matches!(breaker.permission(), Permission::Refused(_)),
            "now open for 2 s"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        go(&breaker).success();
        assert!(!breaker.is_open());
        assert!(breaker.permission().is_go());
    }

    /// A probe whose future is dropped mid-flight (a reap, reload or drain) must not leave the
    /// breaker half-open for good: the next request probes, and a healthy backend closes it.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_probe_through() {
        let breaker = std::sync::Arc::new(CircuitBreaker::new(
            1,
            Duration::from_secs(1),
            Duration::from_secs(4),
        ));
        go(&breaker).failure();
        assert!(breaker.is_open());
        tokio::time::advance(Duration::from_millis(1001)).await;

        // The probe is in flight when its task is told to stop.
        let stop = tokio_util::sync::CancellationToken::new();
        let probing = tokio::spawn({
            let (breaker, stop) = (breaker.clone(), stop.clone());
            async move {
                let Permission::Go(probe) = breaker.permission() else {
                    panic!("the probe is admitted");
                };
                assert!(probe.is_probe());
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => probe.success(),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            matches!(breaker.permission(), Permission::Refused(_)),
            "probe out"
        );
        stop.cancel();
        probing.await.unwrap();

        let next = go(&breaker);
        assert!(next.is_probe(), "the next request is the next probe");
        next.success();
        assert!(!breaker.is_open(), "a healthy backend closes the breaker");
    }
}
