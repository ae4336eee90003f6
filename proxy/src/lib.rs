//! levee: a mail continuity proxy.
//!
//! # Layout
//! - [`run`] starts everything `levee run` serves from a [`levee_config::Config`]: the SMTP
//!   listeners, the delivery worker and the metrics endpoint, and stops them on a
//!   [`CancellationToken`]. `main.rs` only parses the command line and calls it.
//! - [`smtp`]: the SMTP front (client sessions, upstream client, AUTH relay, the
//!   journal-before-250 transaction).
//! - [`delivery`]: store and forward from the journal when the upstream failed.
//! - [`replication`]: the journal stream to the replica site and the sync-mode gate.
//! - [`standby`]: `levee replica`, the replica site's daemon (receiver and applier).
//! - [`trace`]: the `Received:` header naming a message's journal record on every copy.
//! - [`tls`], [`metrics`]: client TLS material; metric names and the Prometheus endpoint.
//! - [`mailstack`]: real Postfix + Dovecot instances on loopback for `levee demo` and tests.
//! - [`cli`]: the command-line interface.

pub mod admin;
pub mod alerts;
pub mod cli;
pub mod compliance;
pub mod delivery;
pub mod demo;
pub mod demo_failover;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod imap;
pub mod listen;
pub mod mailstack;
pub mod metrics;
pub mod per_ip;
pub mod replication;
pub mod resync;
pub mod retention;
pub mod smtp;
pub mod standby;
pub mod takeover;
pub mod tls;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use levee_config::Config;
use levee_journal::{Journal, JournalOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::smtp::pool::UpstreamPool;
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
    #[error("replication: {0}")]
    Replication(String),
    #[error("admin tokens file: {0}")]
    AdminTokens(#[from] admin::TokensError),
}

/// Addresses actually bound (listeners configured with port 0 get a real port here).
#[derive(Debug, Clone)]
pub struct Bound {
    pub smtp: Vec<SocketAddr>,
    pub imap: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Runs levee until `shutdown` is cancelled. `ready` receives the bound addresses once
/// every listener accepts connections.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
) -> Result<(), RunError> {
    run_as(config, shutdown, ready, false).await
}

/// [`run`] beside a levee that is about to stop, taking its place (see [`takeover`]).
pub async fn take_over(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
) -> Result<(), RunError> {
    run_as(config, shutdown, ready, true).await
}

async fn run_as(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
    take_over: bool,
) -> Result<(), RunError> {
    // The recorder first: gauges set during start-up must not be lost.
    metrics::handle();
    let config = Arc::new(config);
    let (mut prebound, lock_wait) = match take_over {
        true => (
            takeover::Prebound::bind(&config)?,
            takeover::lock_wait(&config),
        ),
        false => (takeover::Prebound::default(), Duration::from_secs(2)),
    };
    let journal = open_journal_at(journal_dir(&config), &config.journal, lock_wait).await?;
    let certificate = match &config.tls {
        Some(files) => {
            Some(tls::CertSource::load(&files.cert, &files.key).map_err(tls::TlsError::from)?)
        }
        None => None,
    };
    let tls = match &certificate {
        Some(source) => Some(tls::acceptor_from(source.clone(), None)?),
        None => None,
    };
    if let Some(source) = &certificate {
        tokio::spawn(tls::reload_on_hangup(source.clone(), shutdown.clone()));
    }
    let queued = delivery::recover(&journal).map_err(|source| RunError::Journal {
        path: journal_dir(&config).display().to_string(),
        source,
    })?;
    let replicator = match &config.replication {
        Some(replication) => Some(replication::Replicator::start(
            &journal,
            &config.node.id,
            replication,
            shutdown.clone(),
        )?),
        None => None,
    };
    // Checks both sites and decides the active one (sessions follow it: see failover/).
    let failover =
        failover::driver::Failover::start(config.clone(), journal.clone(), shutdown.clone());
    let wake = Arc::new(Notify::new());
    let routes = smtp::route::Routes::new(config.clone(), failover.clone());
    routes.warn_about_config();
    // Only a site pair has a primary to catch up after the replica was active.
    let resync = failover.as_ref().map(|_| {
        resync::Resync::start(
            journal.clone(),
            config.clone(),
            routes.clone(),
            shutdown.clone(),
        )
    });
    let shared = Arc::new(SmtpShared {
        routes: routes.clone(),
        replicator,
        config: config.clone(),
        journal: journal.clone(),
        tls,
        shutdown: shutdown.clone(),
        delivery: wake.clone(),
        upstreams: UpstreamPool::new(config.smtp.upstream_pool, config.smtp.upstream_idle),
    });

    let mut tasks = JoinSet::new();
    let mut bound = Bound {
        smtp: Vec::new(),
        imap: Vec::new(),
        metrics: None,
        admin: None,
    };
    let gate = listen::Gate::new(
        "smtp",
        config.smtp.max_connections,
        config.smtp.max_connections_per_ip,
    );
    for spec in &config.smtp.listen {
        let (listener, addr) = bind(spec.addr, &mut prebound)?;
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
            gate.clone(),
        ));
    }
    let registry = imap::registry::Registry::start(
        journal.clone(),
        failover.clone(),
        (
            config.upstream.primary.imap,
            config.upstream.replica.as_ref().and_then(|r| r.imap),
        ),
        config
            .imap
            .connect_timeout
            .max(std::time::Duration::from_secs(30)),
        shutdown.clone(),
    );
    let imap = Arc::new(imap::ImapShared {
        config: config.clone(),
        tls: shared.tls.clone(),
        shutdown: shutdown.clone(),
        failover: failover.clone(),
        registry,
        rebuilds: Semaphore::new(imap::REBUILDS_AT_ONCE),
    });
    let imap_gate = listen::Gate::new(
        "imap",
        config.imap.max_connections,
        config.imap.max_connections_per_ip,
    );
    for spec in &config.imap.listen {
        let (listener, addr) = bind(spec.addr, &mut prebound)?;
        bound.imap.push(addr);
        tracing::info!(listener = %addr, tls = ?spec.tls, "listening for IMAP");
        tasks.spawn(imap::serve_listener(
            listener,
            spec.clone(),
            imap.clone(),
            imap_gate.clone(),
        ));
    }
    if let Some(addr) = config.metrics.listen {
        let (listener, addr) = bind(addr, &mut prebound)?;
        bound.metrics = Some(addr);
        let stop = shutdown.clone();
        let status = primary_status(
            &config,
            &journal,
            shared.replicator.clone(),
            failover.clone(),
            resync.clone(),
        );
        tasks.spawn(async move {
            if let Err(err) = metrics::serve(listener, stop, status).await {
                tracing::error!(%err, "metrics endpoint failed");
            }
        });
    }
    if let Some(admin) = &config.admin {
        let tokens = admin::Tokens::load(&admin.tokens)?;
        if tokens.is_empty() {
            tracing::warn!(file = %admin.tokens.display(), "the admin tokens file admits nobody");
        }
        let (listener, addr) = bind(admin.listen, &mut prebound)?;
        bound.admin = Some(addr);
        tracing::info!(listener = %addr, tls = ?admin.tls, "listening for the admin API");
        let status = primary_status(
            &config,
            &journal,
            shared.replicator.clone(),
            failover.clone(),
            resync.clone(),
        );
        let tls = match (&admin.client_ca, &certificate) {
            (Some(ca), Some(source)) => Some(tls::acceptor_from(source.clone(), Some(ca))?),
            _ => shared.tls.clone(),
        };
        let (admin, stop) = (admin.clone(), shutdown.clone());
        let parts = admin::Parts {
            failover: failover.clone(),
            status,
            journal: journal.clone(),
            replicator: shared.replicator.clone(),
            resync: resync.clone(),
        };
        tasks.spawn(async move {
            if let Err(err) = admin::serve(listener, &admin, tokens, tls, parts, stop).await {
                tracing::error!(%err, "admin API failed");
            }
        });
    }
    if let Some(failover) = failover.clone()
        && config.alerts.is_some()
    {
        let watched = alerts::Watched {
            failover,
            replicator: shared.replicator.clone(),
            journal: journal.clone(),
            wake: wake.clone(),
        };
        tasks.spawn(alerts::run(config.clone(), watched, shutdown.clone()));
    }
    if let Some(pruner) = retention::task(
        journal.clone(),
        config.retention.clone(),
        shared.replicator.clone(),
        shutdown.clone(),
    ) {
        tasks.spawn(pruner);
    }
    tasks.spawn(sweep_upstreams(shared.clone()));
    tasks.spawn(smtp::route::follow_active_backend(shared.clone()));
    tasks.spawn(delivery::run(
        journal.clone(),
        config.clone(),
        routes,
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

/// Binds a listener (or takes the one bound ahead); returns it with the address it got
/// (port 0 picks one). A successor may bind it too (see [`takeover`]).
fn bind(
    addr: SocketAddr,
    prebound: &mut takeover::Prebound,
) -> Result<(TcpListener, SocketAddr), RunError> {
    let bind_error = |source| RunError::Bind { addr, source };
    let listener = match prebound.take(addr) {
        Some(listener) => listener,
        None => takeover::reusable(addr).map_err(bind_error)?,
    };
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Closes pooled upstream sessions that sat idle too long, and all of them at shutdown.
async fn sweep_upstreams(shared: Arc<SmtpShared>) {
    let mut tick = tokio::time::interval(shared.upstreams.sweep_interval());
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {
                shared.upstreams.sweep(false);
            }
        }
    }
    shared.upstreams.sweep(true);
}

/// `GET /status` of `levee run`.
/// Changes of the active site shown in the status: this many, newest first.
const TRANSITIONS_SHOWN: usize = 5;

/// The last changes of the active site, from the journal's audit records.
fn recent_transitions(journal: &Journal) -> Vec<serde_json::Value> {
    // Refused logins and switches are audit records too: look a little further back.
    let audits = journal
        .audit_before(u64::MAX, TRANSITIONS_SHOWN * 20)
        .unwrap_or_default();
    audits
        .into_iter()
        .filter_map(|record| match record.kind {
            levee_journal::RecordKind::Audit(a) if a.action == "failover" => {
                Some(serde_json::json!({
                    "seq": record.seq,
                    "time_ms": record.time_ms,
                    "detail": a.detail,
                }))
            }
            _ => None,
        })
        .take(TRANSITIONS_SHOWN)
        .collect()
}

fn primary_status(
    config: &Config,
    journal: &Journal,
    replicator: Option<replication::Replicator>,
    failover: Option<failover::driver::Failover>,
    resync: Option<resync::Resync>,
) -> metrics::StatusFn {
    let (node, journal) = (config.node.id.clone(), journal.clone());
    let mode = config.replication.as_ref().map(|r| r.mode);
    Arc::new(move || {
        let head = journal.head();
        let replication = replicator.as_ref().map(|r| {
            let link = r.status.current();
            serde_json::json!({
                "mode": format!("{:?}", mode.unwrap_or_default()).to_lowercase(),
                "connected": link.connected,
                "acked_seq": link.acked,
                "applied_seq": link.applied,
                "lag_records": head.saturating_sub(link.acked),
                "lag_seconds": levee_replica::shipper::lag_seconds(&journal, link.acked),
                "sync_degraded": r.degraded(),
                "last_error": link.last_error,
            })
        });
        let failover = failover.as_ref().map(|f| {
            serde_json::json!({
                "active": f.active(),
                "health": f.health(),
                "transitions": recent_transitions(&journal),
                "primary_resync": resync.as_ref().map(resync::Resync::current),
            })
        });
        let (smtp, imap) = listen::open_sessions();
        serde_json::json!({
            "role": "primary",
            "node": node,
            "journal_head": head,
            "sessions": { "smtp": smtp, "imap": imap },
            "replication": replication,
            "failover": failover,
        })
    })
}

fn journal_dir(config: &Config) -> std::path::PathBuf {
    config.node.data_dir.join("journal")
}

/// The journal's options: the defaults, and the body key read from `key_file`.
pub fn journal_options(
    key_file: Option<&std::path::Path>,
) -> Result<JournalOptions, levee_journal::JournalError> {
    let body_key = match key_file {
        Some(path) => Some(std::sync::Arc::new(levee_journal::BodyKey::from_file(
            path,
        )?)),
        None => None,
    };
    Ok(JournalOptions {
        body_key,
        ..JournalOptions::default()
    })
}

/// Opens the journal in `dir` off the async threads, with the body key and the free-space
/// reserve of `section`, waiting up to `lock_wait` for another process to let go of it.
pub(crate) async fn open_journal_at(
    dir: std::path::PathBuf,
    section: &levee_config::JournalSection,
    lock_wait: Duration,
) -> Result<Journal, RunError> {
    let path = dir.display().to_string();
    let key_file = section.key_file.clone();
    let min_free_bytes = section.min_free_bytes();
    tokio::task::spawn_blocking(move || {
        let options = JournalOptions {
            min_free_bytes,
            lock_wait,
            ..journal_options(key_file.as_deref())?
        };
        Journal::open(&dir, options)
    })
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
