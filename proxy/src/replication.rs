//! The primary's side of replication: starting the shipper from `[replication]`, and the
//! gate that makes a client's 250 wait for the replica in sync mode.
//!
//! Sync mode is bounded: a 250 waits at most `sync_timeout` for the replica's ack. When
//! that runs out levee degrades to async (a warning, `levee_replication_sync_degraded` = 1)
//! rather than stop accepting mail, and returns to sync once the replica has caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use levee_config::{Replication, ReplicationMode};
use levee_journal::{Journal, Seq};
use levee_replica::auth::Token;
use levee_replica::metrics as rm;
use levee_replica::shipper::{self, ShipperSettings, ShipperStatus};
use rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

use crate::RunError;

/// The running shipper and, in sync mode, the gate for 250s.
#[derive(Debug, Clone)]
pub struct Replicator {
    pub status: ShipperStatus,
    gate: Option<Arc<SyncGate>>,
}

#[derive(Debug)]
struct SyncGate {
    timeout: Duration,
    degraded: AtomicBool,
}

impl Replicator {
    /// Starts streaming `journal` as configured.
    pub fn start(
        journal: &Journal,
        node: &str,
        config: &Replication,
        shutdown: CancellationToken,
    ) -> Result<Replicator, RunError> {
        let client = config
            .client_cert
            .as_deref()
            .zip(config.client_key.as_deref());
        let tls = levee_replica::tls::client_config(&config.ca, client)
            .map_err(|err| RunError::Replication(err.to_string()))?;
        let token = match &config.token_file {
            Some(path) => Some(Token::from_file(path).map_err(|err| {
                RunError::Replication(format!("token file {}: {err}", path.display()))
            })?),
            None => None,
        };
        let server_name = ServerName::try_from(config.server_name.clone()).map_err(|err| {
            RunError::Replication(format!("server_name {:?}: {err}", config.server_name))
        })?;
        let settings = ShipperSettings {
            node: node.to_string(),
            epoch: 1,
            replica: config.replica,
            server_name,
            tls: Arc::new(tls),
            token,
            batch_bytes: config.batch_bytes,
            window: config.window,
            heartbeat: config.heartbeat,
        };
        let status = shipper::spawn(journal.clone(), settings, shutdown);
        metrics::gauge!(rm::SYNC_DEGRADED).set(0.0);
        let gate = (config.mode == ReplicationMode::Sync).then(|| {
            Arc::new(SyncGate {
                timeout: config.sync_timeout,
                degraded: AtomicBool::new(false),
            })
        });
        Ok(Replicator { status, gate })
    }

    /// Whether sync mode has degraded to async (false in async mode).
    pub fn degraded(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(|g| g.degraded.load(Ordering::Relaxed))
    }

    /// In sync mode, waits (bounded) until the replica holds `seq` durably. Returns whether
    /// the replica has it; in async mode returns at once.
    pub async fn wait_durable(&self, seq: Seq) -> bool {
        let Some(gate) = &self.gate else {
            return self.status.current().acked >= seq;
        };
        if gate.degraded.load(Ordering::Relaxed) {
            // Degraded: do not wait, but return to sync once the replica has caught up.
            if self.status.current().acked + 1 >= seq {
                gate.degraded.store(false, Ordering::Relaxed);
                metrics::gauge!(rm::SYNC_DEGRADED).set(0.0);
                tracing::info!(seq, "replica caught up; sync replication restored");
            } else {
                return false;
            }
        }
        if self.status.wait_acked(seq, gate.timeout).await {
            return true;
        }
        metrics::counter!(rm::SYNC_TIMEOUTS).increment(1);
        if !gate.degraded.swap(true, Ordering::Relaxed) {
            metrics::gauge!(rm::SYNC_DEGRADED).set(1.0);
            tracing::warn!(
                seq,
                timeout = ?gate.timeout,
                "replica did not acknowledge in time; sync replication degraded to async"
            );
        }
        false
    }
}
