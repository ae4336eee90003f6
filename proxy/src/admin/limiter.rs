//! Failed admin logins, counted per client address: after `max_failures` within `window`,
//! that address is refused (HTTP 429) until the window has passed, before any token check,
//! so guessing costs the guesser time and levee no Argon2 work. Pure: the caller passes the
//! clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered at most; past that the oldest windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
pub struct FailedLogins {
    max_failures: u32,
    window: Duration,
    seen: HashMap<IpAddr, (Instant, u32)>,
}

impl FailedLogins {
    pub fn new(max_failures: u32, window: Duration) -> FailedLogins {
        FailedLogins {
            max_failures,
            window,
            seen: HashMap::new(),
        }
    }

    /// `Err(wait)` when `ip` must not try now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.seen.get(&ip) {
            Some(&(since, count)) if count >= self.max_failures => {
                let until = since + self.window;
                if now < until {
                    return Err(until - now);
                }
                self.seen.remove(&ip);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&ip) {
            let window = self.window;
            self.seen.retain(|_, (since, _)| now < *since + window);
            if self.seen.len() >= MAX_TRACKED {
                // Still full of live windows: forget the oldest one.
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| *k)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        let entry = self.seen.entry(ip).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// A good token from `ip`: its count starts again.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.seen.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_passes() {
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut limiter = FailedLogins::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limiter.allow(a, t0).is_ok(), "attempt {i}");
            limiter.failed(a, t0 + Duration::from_secs(i));
        }
        let wait = limiter.allow(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another address is not affected.
        assert!(limiter.allow(b, t0 + Duration::from_secs(10)).is_ok());
        // Once the window has passed, a tries again with a fresh count.
        assert!(limiter.allow(a, t0 + Duration::from_secs(61)).is_ok());
        limiter.failed(a, t0 + Duration::from_secs(61));
        assert!(limiter.allow(a, t0 + Duration::from_secs(62)).is_ok());
    }

    #[test]
    fn success_resets_and_old_failures_expire() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let mut limiter = FailedLogins::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.failed(ip, t0);
        limiter.succeeded(ip);
        limiter.failed(ip, t0);
        assert!(limiter.allow(ip, t0).is_ok(), "one failure after a success");
        // A failure long after the first starts a new window rather than adding up.
        limiter.failed(ip, t0 + Duration::from_secs(120));
        assert!(limiter.allow(ip, t0 + Duration::from_secs(121)).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let mut limiter = FailedLogins::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.seen.len() <= MAX_TRACKED);
    }
}
