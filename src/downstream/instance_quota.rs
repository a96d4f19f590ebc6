//! Per-client shares of topic instances. The global instance cap alone lets one client take
//! all of it (2 000 short polls for distinct path values = 2 000 backend pollers for the
//! whole linger). So each client may hold at most `max_topic_instances_per_client` instances
//! it created, and create at most `topic_instance_creations_per_client_per_minute` (a GCRA
//! token bucket from `governor`, whose burst is the same number).
//!
//! A client is its IP address and, on topics that forward headers to the backend, also its
//! identity (the forwarded header values): both shares apply, so one identity spread over
//! many addresses is bounded too. Joining an instance that already exists is never refused.
//!
//! A share is given back when the instance it paid for is gone (reaped after its linger,
//! closed by a reload): the quota keeps only a weak reference to each instance and counts
//! the ones still alive.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::hub::Topic;

/// Full sweeps of dead entries (and the rate limiter's idle keys) after this many charges,
/// so clients that never come back leave nothing behind: amortised O(1) per charge.
const SWEEP_EVERY: usize = 1024;

/// Who pays for a new instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    Ip(IpAddr),
    /// A keyed hash of the forwarded header values (the values themselves may be secrets).
    Identity(u64),
}

impl ClientKey {
    fn label(&self, what: &str) -> String {
        match self {
            ClientKey::Ip(_) => format!("{what}_per_ip"),
            ClientKey::Identity(_) => format!("{what}_per_identity"),
        }
    }

    fn noun(&self) -> &'static str {
        match self {
            ClientKey::Ip(_) => "address",
            ClientKey::Identity(_) => "identity",
        }
    }
}

/// The clients a request would charge for a new instance.
#[derive(Debug, Default)]
pub struct Clients(Vec<ClientKey>);

/// Why a new instance was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// The `limit_hits` label.
    pub limit: String,
    pub reason: String,
    /// When trying again may succeed (for the rate; `None` for the cap: that waits on a linger).
    pub retry_after: Option<Duration>,
}

pub struct InstanceQuota {
    max_instances: usize,
    creations_per_minute: u32,
    creations: DefaultKeyedRateLimiter<ClientKey>,
    held: Mutex<Held>,
    hasher: RandomState,
}

#[derive(Default)]
struct Held {
    instances: HashMap<ClientKey, Vec<Weak<Topic>>>,
    charges_since_sweep: usize,
}

impl InstanceQuota {
    pub fn new(max_instances: usize, creations_per_minute: usize) -> Self {
        let per_minute = u32::try_from(creations_per_minute).unwrap_or(u32::MAX);
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        InstanceQuota {
            max_instances,
            creations_per_minute: per_minute.get(),
            creations: RateLimiter::keyed(Quota::per_minute(per_minute)),
            held: Mutex::new(Held::default()),
            hasher: RandomState::new(),
        }
    }

    /// The clients behind a request: its address, and its forwarded header values if any.
    pub fn clients(&self, ip: Option<IpAddr>, forwarded: &[(String, String)]) -> Clients {
        let mut clients = Vec::with_capacity(2);
        clients.extend(ip.map(|ip| ClientKey::Ip(share_address(ip))));
        if forwarded.iter().any(|(_, value)| !value.is_empty()) {
            clients.push(ClientKey::Identity(self.hasher.hash_one(forwarded)));
        }
        Clients(clients)
    }

    /// Whether `clients` may create one more instance now; counts the creation against the
    /// rate if so. Caps are checked first, so a refusal by the cap spends no rate.
    pub fn admit(&self, clients: &Clients) -> Result<(), QuotaRefusal> {
        {
            let mut held = self.lock();
            for client in &clients.0 {
                if held.live(client) >= self.max_instances {
                    return Err(QuotaRefusal {
                        limit: client.label("topic_instances"),
                        reason: format!(
                            "this {} holds its share of topic instances (limit {}); try again later",
                            client.noun(),
                            self.max_instances
                        ),
                        retry_after: None,
                    });
                }
            }
        }
        for client in &clients.0 {
            if let Err(not_until) = self.creations.check_key(client) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(QuotaRefusal {
                    limit: client.label("topic_instance_creations"),
                    reason: format!(
                        "this {} creates topic instances too fast (limit {} a minute); try again later",
                        client.noun(),
                        self.creations_per_minute
                    ),
                    retry_after: Some(wait),
                });
            }
        }
        Ok(())
    }

    /// Records that `clients` created `topic`: it counts against their share while it lives.
    pub fn charge(&self, clients: &Clients, topic: &Arc<Topic>) {
        let mut held = self.lock();
        for client in &clients.0 {
            let instances = held.instances.entry(client.clone()).or_default();
            if !instances
                .iter()
                .any(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(topic)))
            {
                instances.push(Arc::downgrade(topic));
            }
        }
        held.charges_since_sweep += 1;
        if held.charges_since_sweep >= SWEEP_EVERY {
            held.charges_since_sweep = 0;
            held.instances.retain(|_, instances| {
                instances.retain(|weak| weak.strong_count() > 0);
                !instances.is_empty()
            });
            self.creations.retain_recent();
        }
    }

    /// Live instances `clients`' first key (the address) holds, for tests and admin.
    pub fn held_by_first(&self, clients: &Clients) -> usize {
        let mut held = self.lock();
        clients.0.first().map_or(0, |client| held.live(client))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Held {
    /// The instances `client` created that still exist (dropping the ones that do not).
    fn live(&mut self, client: &ClientKey) -> usize {
        let Some(instances) = self.instances.get_mut(client) else {
            return 0;
        };
        instances.retain(|weak| weak.strong_count() > 0);
        let live = instances.len();
        if live == 0 {
            self.instances.remove(client);
        }
        live
    }
}

/// The address a share is kept under. An IPv6 client usually holds a whole /64 and can
/// pick any source address in it, so IPv6 shares are per /64 (a per-/128 share would be
/// one per address it cares to use); IPv4-mapped IPv6 addresses count as their IPv4.
fn share_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::history::HistoryLimits;
    use crate::hub::subscriber::{OverflowPolicy, QueueLimits};
    use crate::hub::topic::{Mode, TopicSettings};
    use crate::hub::TopicKey;

    fn topic(n: usize) -> Arc<Topic> {
        let settings = TopicSettings {
            mode: Mode::State,
            history: HistoryLimits {
                max_messages: 1,
                max_bytes: 1024,
            },
            queue: QueueLimits {
                max_messages: 1,
                max_bytes: 1024,
            },
            on_full: OverflowPolicy::Conflate,
            deltas: false,
            idle_linger: Duration::from_secs(1),
        };
        Topic::new(TopicKey::new("t", vec![n.to_string()]), settings)
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn caps_live_instances_per_address_and_gives_the_share_back() {
        let quota = InstanceQuota::new(3, 1000);
        let client = quota.clients(ip(1), &[]);
        let mut live = Vec::new();
        for n in 0..3 {
            quota.admit(&client).unwrap();
            let created = topic(n);
            quota.charge(&client, &created);
            quota.charge(&client, &created); // a racing second creator is charged once
            live.push(created);
        }
        let refusal = quota.admit(&client).unwrap_err();
        assert_eq!(refusal.limit, "topic_instances_per_ip");
        assert_eq!(refusal.retry_after, None);
        assert!(
            quota.admit(&quota.clients(ip(2), &[])).is_ok(),
            "another address has its own share"
        );

        live.pop(); // reaped: the last reference is gone
        assert_eq!(quota.held_by_first(&client), 2);
        assert!(quota.admit(&client).is_ok());
    }

    #[test]
    fn an_identity_is_capped_across_addresses() {
        let quota = InstanceQuota::new(2, 1000);
        let token = vec![("authorization".to_string(), "Bearer alice".to_string())];
        let mut live = Vec::new();
        for n in 0..2 {
            let client = quota.clients(ip(n as u8 + 1), &token);
            quota.admit(&client).unwrap();
            let created = topic(n);
            quota.charge(&client, &created);
            live.push(created);
        }
        let refusal = quota.admit(&quota.clients(ip(9), &token)).unwrap_err();
        assert_eq!(refusal.limit, "topic_instances_per_identity");
        let bob = vec![("authorization".to_string(), "Bearer bob".to_string())];
        assert!(quota.admit(&quota.clients(ip(9), &bob)).is_ok());
    }

    #[test]
    fn creations_are_rate_limited_per_address() {
        let quota = InstanceQuota::new(1000, 5);
        let client = quota.clients(ip(1), &[]);
        for _ in 0..5 {
            quota.admit(&client).unwrap();
        }
        let refusal = quota.admit(&client).unwrap_err();
        assert_eq!(refusal.limit, "topic_instance_creations_per_ip");
        let wait = refusal.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        assert!(quota.admit(&quota.clients(ip(2), &[])).is_ok());
    }

    #[test]
    fn ipv6_shares_are_per_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(share_address(a), share_address(b));
        assert_ne!(share_address(a), share_address(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(share_address(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
