//! `levee replica`: the replica site's daemon. It receives the journal stream into its own
//! journal and applies every message to the standby mail server.
//!
//! - [`apply`]: the applier loop, record by record, and its bookkeeping in the journal.
//! - `link`: the applier's kept-open LMTP (or SMTP) connection to the standby.
//! - [`dedupe`]: the trace header on every copy, and the check at the standby that makes
//!   applying exactly-once across crashes; `imap_client` and `imap_wire` are its IMAP.

pub mod apply;
pub mod dedupe;
mod imap_client;
mod imap_wire;
pub(crate) mod link;
pub(crate) mod mailbox;

use std::net::SocketAddr;
use std::sync::Arc;

use levee_config::ReplicaConfig;
use levee_journal::Journal;
use levee_replica::auth::Token;
use levee_replica::receiver::{self, ReceiverSettings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::RunError;

/// Bound on each IMAP command of the applier's duplicate check (a header search over a
/// large mailbox takes a while).
const DEDUPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Addresses the replica daemon bound.
#[derive(Debug, Clone)]
pub struct ReplicaBound {
    pub stream: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// Runs the replica daemon until `shutdown`.
pub async fn run(
    config: ReplicaConfig,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<ReplicaBound>>,
) -> Result<(), RunError> {
    // The recorder first: gauges set during start-up must not be lost.
    crate::metrics::handle();
    let dir = config.node.data_dir.join("journal");
    let lock_wait = std::time::Duration::from_secs(2);
    let journal = crate::open_journal_at(dir, &config.journal, lock_wait).await?;
    // Compliance tools must not add records to a journal that mirrors the primary's.
    if let Err(err) = journal.set_meta(crate::compliance::ROLE_KEY, b"replica") {
        tracing::warn!(%err, "cannot mark the journal as a replica's");
    }
    let r = &config.replica;
    let tls = levee_replica::tls::server_config(&r.cert, &r.key, r.client_ca.as_deref())
        .map_err(|err| RunError::Replication(err.to_string()))?;
    let token = match &r.token_file {
        Some(path) => Some(Token::from_file(path).map_err(|err| {
            RunError::Replication(format!("token file {}: {err}", path.display()))
        })?),
        None => None,
    };
    let dedupe = dedupe::Dedupe::from_config(&config.apply, DEDUPE_TIMEOUT)
        .map_err(|err| RunError::Replication(err.to_string()))?;
    let listener = TcpListener::bind(r.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: r.listen,
            source,
        })?;
    let mut bound = ReplicaBound {
        stream: listener.local_addr().unwrap_or(r.listen),
        metrics: None,
    };
    let mut tasks = JoinSet::new();
    if let Some(addr) = config.metrics.listen {
        let metrics_listener = crate::metrics::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        bound.metrics = metrics_listener.local_addr().ok();
        let stop = shutdown.clone();
        let status = replica_status(&config, &journal);
        tasks.spawn(async move {
            if let Err(err) = crate::metrics::serve(metrics_listener, stop, status).await {
                tracing::error!(%err, "metrics endpoint failed");
            }
        });
    }
    tracing::info!(listen = %bound.stream, head = journal.head(), "replica ready");
    metrics::gauge!(levee_replica::metrics::RECV_HEAD).set(journal.head() as f64);
    metrics::gauge!(levee_replica::metrics::APPLIED_SEQ)
        .set(apply::applied_through(&journal) as f64);
    let settings = ReceiverSettings {
        node: config.node.id.clone(),
        tls: Arc::new(tls),
        token,
        idle_timeout: r.idle_timeout,
        applied: Some(apply::applied_through),
    };
    tasks.spawn(receiver::serve(
        listener,
        journal.clone(),
        settings,
        shutdown.clone(),
    ));
    tasks.spawn(apply::run(
        journal.clone(),
        config.apply.clone(),
        dedupe,
        shutdown.clone(),
    ));
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    while tasks.join_next().await.is_some() {}
    if let Err(err) = journal.flush().await {
        tracing::error!(%err, "final journal flush failed");
    }
    Ok(())
}

/// `GET /status` of `levee replica`.
fn replica_status(config: &ReplicaConfig, journal: &Journal) -> crate::metrics::StatusFn {
    let (node, journal) = (config.node.id.clone(), journal.clone());
    Arc::new(move || {
        let head = journal.head();
        let pending = journal
            .undelivered(usize::MAX)
            .map(|q| q.len())
            .unwrap_or(0);
        let applied = apply::applied_through(&journal);
        serde_json::json!({
            "role": "replica",
            "node": node,
            "durable_seq": head,
            "applied_seq": applied,
            "apply_pending": pending,
        })
    })
}

/// Opens a journal for status tools (the daemon must be stopped).
pub fn open_journal(config: &ReplicaConfig) -> Result<Journal, levee_journal::JournalError> {
    Journal::open(
        &config.node.data_dir.join("journal"),
        crate::journal_options(config.journal.key_file.as_deref())?,
    )
}
