//! Replication settings: the primary's `[replication]` section (where and how the journal
//! is streamed) and the whole file of `levee replica`, the daemon at the replica site.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{Log, Metrics, Node};

/// When a client's 250 may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// After the local journal is durable; the replica follows (RPO: the replication lag).
    #[default]
    Async,
    /// After the replica has the record durably too, waiting at most `sync_timeout`
    /// before degrading to async (RPO 0 while the replica keeps up).
    Sync,
}

/// `[replication]` in levee run's file: the stream to the replica site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// The replica daemon's address.
    pub replica: SocketAddr,
    /// Name the replica's certificate must carry.
    pub server_name: String,
    /// PEM certificate(s) trusted to sign (or be) the replica's certificate.
    pub ca: PathBuf,
    /// File holding the shared secret the replica expects; never logged.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Client certificate and key, for replicas that authenticate by certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Longest a client's 250 waits for the replica in sync mode.
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Largest batch of records in one frame (a larger single record goes alone).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Unacknowledged batches in flight.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Heartbeat interval when idle; a peer silent for 5 intervals is dropped.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_batch_bytes() -> usize {
    1024 * 1024
}
fn default_window() -> usize {
    8
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

/// The file of `levee replica`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    #[serde(default)]
    pub node: Node,
    pub replica: ReplicaListen,
    pub apply: Apply,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub log: Log,
}

/// Where the replica daemon accepts the stream, and whom it accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaListen {
    pub listen: SocketAddr,
    /// The replica's own TLS certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Shared secret primaries must present (token auth).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA whose client certificates are accepted (certificate auth).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A primary silent this long is dropped.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_idle() -> Duration {
    Duration::from_secs(10)
}

/// How replicated messages reach the standby mail server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    /// LMTP address of the standby's delivery agent (Dovecot), preferred.
    #[serde(default)]
    pub lmtp: Option<SocketAddr>,
    /// Or the standby's SMTP server.
    #[serde(default)]
    pub smtp: Option<SocketAddr>,
    /// Only recipients in these domains are delivered at the replica: outbound mail was
    /// already relayed by the primary and must not leave twice.
    pub local_domains: Vec<String>,
    /// Name levee gives itself to the standby.
    #[serde(default = "default_apply_name")]
    pub hostname: String,
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub retry: Duration,
}

fn default_apply_name() -> String {
    "levee-replica.localdomain".into()
}
fn default_retry() -> Duration {
    Duration::from_secs(2)
}
