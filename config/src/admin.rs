//! `[admin]`: the admin API (status, switchover, failback) over HTTPS with bearer tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin API listens.
    pub listen: SocketAddr,
    /// The tokens file: `<id> <role> <name> <argon2id hash>` per line, made with
    /// `levee admin token`. Holds hashes only.
    pub tokens: PathBuf,
    /// `implicit` (HTTPS with the `[tls]` certificate, the default) or `none` (plain HTTP,
    /// accepted only on a loopback address, e.g. behind a local reverse proxy).
    #[serde(default)]
    pub tls: AdminTls,
    /// Failed logins from one address before it is refused for `failure_window`.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(with = "humantime_serde", default = "default_failure_window")]
    pub failure_window: Duration,
    /// A planned switchover to the replica holds new SMTP transactions and waits this long
    /// at most for the replica to hold every record; past it, nothing switches.
    #[serde(with = "humantime_serde", default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// A CA (PEM) whose client certificates the listener requires, on top of a token: a
    /// connection without one signed by this CA ends in the TLS handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminTls {
    None,
    #[default]
    Implicit,
}

fn default_max_failures() -> u32 {
    5
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_failure_window() -> Duration {
    Duration::from_secs(60)
}
