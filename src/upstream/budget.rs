//! The backend budget: a token bucket of `max_requests_per_second` shared by every request
//! sidestream makes itself, with a fair, prioritised queue in front of it.
//!
//! Waiters are served by priority (auth before topic instances with held subscribers before
//! instances kept alive only by short polls or linger), first come first served within one
//! priority. Each topic instance has at most one request waiting or in flight (its task is
//! sequential), so first-come-first-served is round robin across instances: when the budget is
//! short every instance of a priority waits the same, i.e. its interval stretches evenly.
//!
//! Clients' requests (auth callbacks, JWKS fetches, inbound POSTs: [`Share::Clients`]) also
//! draw on a second bucket of half the rate, so that together they never take more than half
//! of the budget: topic instances keep at least the other half whenever they need it, however
//! many clients ask. A client waiter whose half is used up is skipped (it does not block the
//! line); when topics do not need their half, clients' requests still get only theirs.
//!
//! The queue is bounded by its callers: one waiter per topic instance (capped by
//! `limits.max_topic_instances`) plus auth and inbound requests, which hold their class's
//! concurrency permit while they wait and give up after their acquire timeout. Overflow
//! policy: none needed, a waiter is dropped (cancel-safe) when its task stops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::METRICS;

/// Who is asking, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// An auth callback or JWKS fetch: a client's request waits on it.
    Auth,
    /// A topic instance someone is subscribed to (SSE, WebSocket, long poll), or an inbound
    /// WebSocket message (its sender is held too).
    Held,
    /// A topic instance kept alive only by short polls or its linger.
    Idle,
}

impl Priority {
    const ALL: [Priority; 3] = [Priority::Auth, Priority::Held, Priority::Idle];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Auth => "auth",
            Priority::Held => "held",
            Priority::Idle => "idle",
        }
    }
}

/// Whose half of the budget a request may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// Topic polls and streams: the whole budget.
    Topics,
    /// Requests clients cause (auth, inbound): at most half of the budget, all together.
    Clients,
}

struct Waiter {
    id: u64,
    wake: Arc<Notify>,
    share: Share,
}

struct State {
    tokens: f64,
    /// The clients' half: [`Share::Clients`] waiters need one of these as well.
    client_tokens: f64,
    refilled: Instant,
    queues: [VecDeque<Waiter>; 3],
    next_id: u64,
}

impl State {
    fn refill(&mut self, rate: f64, burst: f64) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.client_tokens = (self.client_tokens + elapsed * rate / 2.0).min(client_burst(burst));
        self.refilled = now;
    }

    /// The waiter served next: the oldest of the most urgent non-empty queue, skipping
    /// clients' waiters while the clients' half is used up (unless only they wait).
    fn head(&self) -> Option<&Waiter> {
        let mut waiters = self.queues.iter().flatten();
        let clients_may = self.client_tokens >= 1.0;
        waiters
            .clone()
            .find(|w| clients_may || w.share == Share::Topics)
            .or_else(|| waiters.next())
    }

    fn remove(&mut self, id: u64) {
        for queue in &mut self.queues {
            queue.retain(|w| w.id != id);
        }
    }
}

pub struct Budget {
    state: Mutex<State>,
    rate: f64,
    /// Tokens that may pile up while nobody asks. Small (1/20 s of the rate), so that no
    /// wall-clock second sees more than the rate plus 5 %.
    burst: f64,
}

/// The clients' half holds at most half the burst (and at least one token).
fn client_burst(burst: f64) -> f64 {
    (burst / 2.0).max(1.0)
}

impl Budget {
    pub fn new(max_requests_per_second: u32) -> Self {
        let rate = f64::from(max_requests_per_second.max(1));
        let burst = (rate / 20.0).max(1.0);
        Budget {
            state: Mutex::new(State {
                tokens: burst,
                client_tokens: client_burst(burst),
                refilled: Instant::now(),
                queues: Default::default(),
                next_id: 0,
            }),
            rate,
            burst,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for one request's worth of budget. Cancel-safe: dropping the future gives up
    /// its place. Returns how long it waited (the stretch this request suffered).
    pub async fn acquire(&self, priority: Priority, share: Share) -> Duration {
        let started = Instant::now();
        let wake = Arc::new(Notify::new());
        let id = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.queues[priority.index()].push_back(Waiter {
                id,
                wake: wake.clone(),
                share,
            });
            id
        };
        let mut place = Place {
            budget: self,
            id,
            served: false,
        };
        METRICS
            .upstream_budget_waiting
            .with_label_values(&[priority.name()])
            .inc();
        let _waiting = WaitingGauge(priority);
        loop {
            let wait = {
                let mut state = self.lock();
                state.refill(self.rate, self.burst);
                let head = state.head().map(|w| (w.id, w.wake.clone()));
                let is_head = head.as_ref().is_some_and(|(head, _)| *head == id);
                let clients = share == Share::Clients;
                if is_head && state.tokens >= 1.0 && (!clients || state.client_tokens >= 1.0) {
                    state.tokens -= 1.0;
                    if clients {
                        state.client_tokens -= 1.0;
                    }
                    state.remove(id);
                    place.served = true;
                    // The next in line may be able to go too (tokens left over).
                    if let Some(next) = state.head() {
                        next.wake.notify_one();
                    }
                    break;
                }
                match head {
                    Some((_, wake)) if !is_head => {
                        // The head may have changed without being told (the clients' half
                        // refilled): tell it; a spurious wake-up only makes it look again.
                        wake.notify_one();
                        None
                    }
                    _ => {
                        let mut wait = (1.0 - state.tokens).max(0.0) / self.rate;
                        if clients {
                            wait = wait.max((1.0 - state.client_tokens).max(0.0) * 2.0 / self.rate);
                        }
                        Some(Duration::from_secs_f64(wait))
                    }
                }
            };
            match wait {
                // Head of the line: sleep until the next token, unless someone more urgent
                // arrives first (then this waiter is woken when it is the head again).
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
        let waited = started.elapsed();
        METRICS
            .upstream_budget_wait
            .with_label_values(&[priority.name()])
            .observe(waited.as_secs_f64());
        waited
    }

    /// How many wait at each priority (for tests and admin).
    pub fn waiting(&self) -> [usize; 3] {
        let state = self.lock();
        Priority::ALL.map(|p| state.queues[p.index()].len())
    }
}

/// A waiter's place in line; leaving (a cancelled wait) lets the next one move up.
struct Place<'a> {
    budget: &'a Budget,
    id: u64,
    served: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut state = self.budget.lock();
        let was_head = state.head().is_some_and(|w| w.id == self.id);
        state.remove(self.id);
        if was_head {
            if let Some(next) = state.head() {
                next.wake.notify_one();
            }
        }
    }
}

/// Keeps the `waiting` gauge right however the wait ends.
struct WaitingGauge(Priority);

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        METRICS
            .upstream_budget_waiting
            .with_label_values(&[self.0.name()])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_rate_in_any_second() {
        let budget = Arc::new(Budget::new(20));
        let granted = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let budget = budget.clone();
                let granted = granted.clone();
                tokio::spawn(async move {
                    budget.acquire(Priority::Idle, Share::Topics).await;
                    granted.lock().unwrap().push(Instant::now());
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let granted = granted.lock().unwrap();
        for window in 0..6 {
            let from = start + Duration::from_secs(window);
            let count = granted
                .iter()
                .filter(|t| **t >= from && **t < from + Duration::from_secs(1))
                .count();
            assert!(count <= 21, "second {window}: {count} grants");
        }
        assert!(
            granted.iter().all(|t| *t <= start + Duration::from_secs(6)),
            "all served"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_instances_go_before_idle_ones_and_auth_before_both() {
        let budget = Arc::new(Budget::new(10));
        // Use up the burst so everyone queues.
        while budget.lock().tokens >= 1.0 {
            budget.acquire(Priority::Idle, Share::Topics).await;
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (n, priority) in [
            (0, Priority::Idle),
            (1, Priority::Idle),
            (2, Priority::Held),
            (3, Priority::Auth),
            (4, Priority::Held),
        ] {
            let budget = budget.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let share = if priority == Priority::Auth {
                    Share::Clients
                } else {
                    Share::Topics
                };
                budget.acquire(priority, share).await;
                order.lock().unwrap().push(n);
            }));
            // Each queues before the next arrives.
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![3, 2, 4, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_budget_stretches_every_instance_evenly() {
        // 10 instances each wanting a request every 100 ms (100/s) against 20/s.
        let budget = Arc::new(Budget::new(20));
        let served: Arc<Vec<AtomicUsize>> = Arc::new((0..10).map(|_| AtomicUsize::new(0)).collect());
        let stop = tokio_util::sync::CancellationToken::new();
        for n in 0..10 {
            let (budget, served, stop) = (budget.clone(), served.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = budget.acquire(Priority::Held, Share::Topics) => {}
                    }
                    served[n].fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        let counts: Vec<usize> = served.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        let total: usize = counts.iter().sum();
        assert!(total <= 20 * 10 + 2, "within the budget: {total}");
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 2, "even stretch: {counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_lets_the_next_one_through() {
        let budget = Arc::new(Budget::new(1));
        budget.acquire(Priority::Held, Share::Topics).await; // the one burst token
        let first = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Priority::Held, Share::Topics).await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Priority::Held, Share::Topics).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(budget.waiting(), [0, 2, 0]);
        first.abort();
        let _ = first.await;
        assert_eq!(budget.waiting(), [0, 1, 0]);
        tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("the second waiter is served after the cancelled one left")
            .unwrap();
    }

    /// Grants per simulated second to `topics` held topic instances and `clients` auth
    /// waiters, each asking again right after each grant.
    async fn topic_and_client_grants(
        rate: u32,
        topics: usize,
        clients: usize,
        seconds: u64,
    ) -> (Vec<usize>, Vec<usize>) {
        let budget = Arc::new(Budget::new(rate));
        let start = Instant::now();
        let topic = Arc::new(Mutex::new(Vec::new()));
        let auth = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let spawn = |priority: Priority, share: Share, grants: Arc<Mutex<Vec<Instant>>>| {
            let (budget, stop) = (budget.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = budget.acquire(priority, share) => {}
                    }
                    grants.lock().unwrap().push(Instant::now());
                }
            });
        };
        for _ in 0..clients {
            spawn(Priority::Auth, Share::Clients, auth.clone());
        }
        for _ in 0..topics {
            spawn(Priority::Held, Share::Topics, topic.clone());
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.cancel();
        let per_second = |grants: &Mutex<Vec<Instant>>| {
            let grants = grants.lock().unwrap();
            (0..seconds)
                .map(|s| {
                    let from = start + Duration::from_secs(s);
                    grants
                        .iter()
                        .filter(|t| **t >= from && **t < from + Duration::from_secs(1))
                        .count()
                })
                .collect::<Vec<_>>()
        };
        (per_second(&topic), per_second(&auth))
    }

    #[tokio::test(start_paused = true)]
    async fn auth_waiters_saturating_the_queue_leave_topics_half_the_budget() {
        let (topic, auth) = topic_and_client_grants(20, 1, 50, 5).await;
        for (second, (topic, auth)) in topic.iter().zip(&auth).enumerate() {
            assert!(
                *topic >= 10 - 1,
                "second {second}: the topic got {topic} of 20 (auth {auth})"
            );
            assert!(*auth <= 10 + 1, "second {second}: auth got {auth} of 20");
            assert!(
                topic + auth <= 21,
                "second {second}: {topic} + {auth} within the rate"
            );
        }
        assert!(auth.iter().all(|a| *a >= 9), "auth still gets its half: {auth:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn clients_alone_get_half_the_budget_and_do_not_block_the_line() {
        let budget = Arc::new(Budget::new(20));
        // Use up the clients' half, then queue an inbound POST ahead of a held topic.
        while budget.lock().client_tokens >= 1.0 {
            budget.acquire(Priority::Auth, Share::Clients).await;
        }
        let inbound = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Priority::Held, Share::Clients).await }
        });
        tokio::task::yield_now().await;
        let topic = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Priority::Held, Share::Topics).await }
        });
        let (topic, inbound) = (topic.await.unwrap(), inbound.await.unwrap());
        assert!(
            topic < inbound,
            "the topic went first ({topic:?}, inbound {inbound:?})"
        );
        let (_, auth) = topic_and_client_grants(20, 0, 50, 3).await;
        assert!(
            auth.iter().all(|a| *a <= 11),
            "at most half of 20 per second: {auth:?}"
        );
    }
}
