//! Counting what each client IP address holds (connections, long polls), with a cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Per-IP counts. Entries exist only while an IP holds something, so the map is bounded by
/// the open connections.
#[derive(Default)]
pub struct PerIp {
    /// foldhash, seeded per map, as the topic's subscriber map: SipHash was ~250
    /// instructions of every long poll's slot taken and given back.
    counts: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
}

/// One held unit for an IP; released on drop.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A slot for `ip` unless it already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            ip,
        })
    }

    pub fn held(&self, ip: IpAddr) -> usize {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_releases_on_drop() {
        let per_ip = Arc::new(PerIp::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = per_ip.acquire(a, 2).unwrap();
        let _second = per_ip.acquire(a, 2).unwrap();
        assert!(per_ip.acquire(a, 2).is_none());
        assert!(per_ip.acquire(b, 2).is_some(), "another IP has its own count");
        drop(first);
        assert_eq!(per_ip.held(a), 1);
        assert!(per_ip.acquire(a, 2).is_some());
        assert_eq!(per_ip.held(b), 0, "released slots leave no entry");
    }
}
