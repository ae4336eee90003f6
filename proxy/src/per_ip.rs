//! Connections per client address: one host (a flood, a slowloris, a runaway script) may
//! hold at most `limit` sessions of a protocol, so it cannot take every slot from the
//! others. IPv6 clients are counted by their /64, which is what one host usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The open sessions of each client address, for one protocol.
#[derive(Debug)]
pub struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One session counted against its address; dropping it gives the place back.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    /// `limit` sessions per address; 0 means no limit.
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more session from `addr`, or `None` when it already holds `limit`.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<IpSlot> {
        let key = key(addr);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if self.limit != 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: self.clone(),
            key,
        })
    }

    /// Sessions open now from `addr`.
    pub fn open(&self, addr: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&key(addr)).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address a limit counts: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_its_limit_and_places_come_back() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = per_ip.admit(a).expect("first");
        let _second = per_ip.admit(a).expect("second");
        assert!(per_ip.admit(a).is_none(), "a third from the same address");
        assert!(per_ip.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert_eq!(per_ip.open(a), 1);
        assert!(per_ip.admit(a).is_some(), "a place came back");
    }

    #[test]
    fn ipv6_hosts_are_counted_by_their_64_and_mapped_v4_as_v4() {
        let per_ip = PerIp::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _slot = per_ip.admit(one).expect("first");
        assert!(per_ip.admit(same_net).is_none());
        assert!(per_ip.admit(other_net).is_some());
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        let _v4 = per_ip.admit(v4).expect("v4");
        assert!(per_ip.admit(mapped).is_none());
    }

    #[test]
    fn zero_means_no_limit() {
        let per_ip = PerIp::new(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000)
            .map(|_| per_ip.admit(a).expect("admitted"))
            .collect();
        assert_eq!(per_ip.open(a), 1000);
        drop(slots);
        assert_eq!(per_ip.open(a), 0);
    }
}
