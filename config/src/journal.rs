//! `[journal]` (encryption at rest of the journal's bodies) and `[retention]` (how long
//! journaled mail is kept).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The journal's storage options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    /// Seals message bodies at rest (AES-256-GCM) with the key in this file: 32 bytes or 64
    /// hex digits, e.g. made with `head -c 32 /dev/urandom`. Envelopes stay searchable.
    /// A journal once sealed opens only with its key.
    pub key_file: Option<PathBuf>,
    /// New mail is refused (452, or a replication batch deferred) while the journal's
    /// filesystem has less than this many MiB available; it is accepted again as soon as
    /// space is freed. Leave room for at least two of the largest messages.
    pub min_free_mb: u64,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            key_file: None,
            min_free_mb: 512,
        }
    }
}

impl JournalSection {
    /// The reserve in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_mb.saturating_mul(1 << 20)
    }
}

/// How long journaled mail is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Messages and mailbox changes accepted more than this many days ago are pruned,
    /// once delivered and replicated, unless a legal hold keeps them. Audit records are
    /// kept for good.
    pub days: u32,
    /// How often the pruning pass runs.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(3600)
}
