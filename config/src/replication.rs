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
    /// Encryption at rest of this site's journal (its own key: the stream carries bodies
    /// readable inside TLS). Pruning follows the primary's.
    #[serde(default)]
    pub journal: crate::JournalSection,
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
    /// IMAP address of the standby, for the duplicate check that makes applying
    /// exactly-once across crashes (with `master_user` and `master_password_file`).
    /// Without it the applier is at-least-once.
    #[serde(default)]
    pub imap: Option<SocketAddr>,
    /// IMAP master user allowed to read every mailbox (Dovecot `master = yes` passdb),
    /// used as the SASL PLAIN authentication identity.
    #[serde(default)]
    pub master_user: Option<String>,
    /// File whose first line is the master user's password; never logged.
    #[serde(default)]
    pub master_password_file: Option<PathBuf>,
}

impl Apply {
    /// Whether the duplicate check is configured (all three keys; validation refuses a part).
    pub fn dedupe_configured(&self) -> bool {
        self.imap.is_some() && self.master_user.is_some() && self.master_password_file.is_some()
    }
}

fn default_apply_name() -> String {
    "levee-replica.localdomain".into()
}
fn default_retry() -> Duration {
    Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use crate::{ConfigFile, ReplicaConfig};

    /// A replica file whose key files exist, with `apply` as its `[apply]` body.
    fn replica_file(dir: &std::path::Path, apply: &str) -> String {
        for name in ["cert.pem", "key.pem", "token", "master.pw"] {
            std::fs::write(dir.join(name), "x\n").unwrap();
        }
        format!(
            "[replica]\nlisten = \"127.0.0.1:7400\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n\
             token_file = \"{d}/token\"\n\n[apply]\nlocal_domains = [\"example.test\"]\n{apply}\n",
            d = dir.display()
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match ReplicaConfig::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(err) => err.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn duplicate_check_keys_go_together_and_need_lmtp() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let full = format!(
            "lmtp = \"127.0.0.1:24\"\nimap = \"127.0.0.1:143\"\nmaster_user = \"m\"\n\
             master_password_file = \"{d}/master.pw\""
        );
        let config = ReplicaConfig::from_toml(&replica_file(dir.path(), &full)).unwrap();
        assert!(config.apply.dedupe_configured());

        let without =
            ReplicaConfig::from_toml(&replica_file(dir.path(), "lmtp = \"127.0.0.1:24\"")).unwrap();
        assert!(!without.apply.dedupe_configured());

        let part = "lmtp = \"127.0.0.1:24\"\nimap = \"127.0.0.1:143\"";
        let errs = problems(&replica_file(dir.path(), part));
        assert!(errs.iter().any(|e| e.contains("go together")), "{errs:?}");

        let smtp = full.replace("lmtp", "smtp");
        let errs = problems(&replica_file(dir.path(), &smtp));
        assert!(errs.iter().any(|e| e.contains("needs lmtp")), "{errs:?}");

        let missing = full.replace("master.pw", "absent.pw");
        let errs = problems(&replica_file(dir.path(), &missing));
        assert!(
            errs.iter()
                .any(|e| e.contains("apply.master_password_file") && e.contains("line")),
            "{errs:?}"
        );

        let spaced = "lmtp = \"127.0.0.1:24\"\nhostname = \"two words\"";
        let errs = problems(&replica_file(dir.path(), spaced));
        assert!(
            errs.iter().any(|e| e.contains("apply.hostname")),
            "{errs:?}"
        );
    }
}
