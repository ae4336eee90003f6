//! `[failover]`: health checks of both backend sites and when to move clients.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// How often each backend's SMTP and IMAP servers are checked (greeting and NOOP).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A check that takes longer than this failed.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Consecutive failed checks of the primary before clients move to the replica.
    pub failures: u32,
    /// Shortest time between two transitions: a flapping primary does not bounce clients.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(1000),
            failures: 3,
            hold_down: Duration::from_secs(60),
        }
    }
}
