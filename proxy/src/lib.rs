//! levee: a mail continuity proxy.
//!
//! # Layout
//! - [`run`] starts everything `levee run` serves from a [`levee_config::Config`]: the SMTP
//!   listeners, the delivery worker and the metrics endpoint, and stops them on a
//!   [`CancellationToken`]. `main.rs` only parses the command line and calls it.
//! - [`smtp`]: the SMTP front (client sessions, upstream client, AUTH relay, the
//!   journal-before-250 transaction).
//! - [`delivery`]: store and forward from the journal when the upstream failed.
//! - [`tls`], [`metrics`]: client TLS material; metric names and the Prometheus endpoint.
//! - [`mailstack`]: real Postfix + Dovecot instances on loopback for `levee demo` and tests.
//! - [`cli`]: the command-line interface.

pub mod cli;
pub mod delivery;
pub mod demo;
pub mod mailstack;
pub mod metrics;
pub mod smtp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use levee_config::Config;
use levee_journal::{Journal, JournalOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::smtp::{ListenerInfo, SmtpShared};

/// Why levee could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("journal at {path}: {source}")]
    Journal {
        path: String,
        source: levee_journal::JournalError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Addresses actually bound (listeners configured with port 0 get a real port here).
#[derive(Debug, Clone)]
pub struct Bound {
    pub smtp: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// Runs levee until `shutdown` is cancelled. `ready` receives the bound addresses once
/// every listener accepts connections.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let journal = open_journal(&config).await?;
    let tls = match &config.tls {
        Some(tls) => Some(tls::acceptor_from_files(&tls.cert, &tls.key)?),
        None => None,
    };
    let queued = delivery::recover(&journal).map_err(|source| RunError::Journal {
        path: journal_dir(&config).display().to_string(),
        source,
    })?;
    let wake = Arc::new(Notify::new());
    let shared = Arc::new(SmtpShared {
        config: config.clone(),
        journal: journal.clone(),
        tls,
        shutdown: shutdown.clone(),
        delivery: wake.clone(),
    });

    let mut tasks = JoinSet::new();
    let mut bound = Bound {
        smtp: Vec::new(),
        metrics: None,
    };
    let slots = Arc::new(Semaphore::new(config.smtp.max_connections));
    for spec in &config.smtp.listen {
        let listener = TcpListener::bind(spec.addr)
            .await
            .map_err(|source| RunError::Bind {
                addr: spec.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: spec.addr,
            source,
        })?;
        bound.smtp.push(addr);
        let info = ListenerInfo {
            kind: spec.kind,
            tls: spec.tls,
            name: smtp::listener_name(spec.kind, addr),
        };
        tracing::info!(listener = %info.name, tls = ?spec.tls, "listening");
        tasks.spawn(smtp::serve_listener(
            listener,
            info,
            shared.clone(),
            slots.clone(),
        ));
    }
    if let Some(addr) = config.metrics.listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        bound.metrics = listener.local_addr().ok();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = metrics::serve(listener, stop).await {
                tracing::error!(%err, "metrics endpoint failed");
            }
        });
    } else {
        metrics::handle();
    }
    tasks.spawn(delivery::run(
        journal.clone(),
        config.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    if queued > 0 {
        wake.notify_one();
    }
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    while tasks.join_next().await.is_some() {}
    if let Err(err) = journal.flush().await {
        tracing::error!(%err, "final journal flush failed");
    }
    tracing::info!("levee stopped");
    Ok(())
}

fn journal_dir(config: &Config) -> std::path::PathBuf {
    config.node.data_dir.join("journal")
}

async fn open_journal(config: &Config) -> Result<Journal, RunError> {
    let dir = journal_dir(config);
    let path = dir.display().to_string();
    tokio::task::spawn_blocking(move || Journal::open(&dir, JournalOptions::default()))
        .await
        .map_err(|join| RunError::Journal {
            path: path.clone(),
            source: levee_journal::JournalError::Io {
                context: "open".into(),
                source: std::io::Error::other(join.to_string()),
            },
        })?
        .map_err(|source| RunError::Journal { path, source })
}
