//! The admin surface: an HTTPS JSON API ([`api`]) for status, switchover and failback,
//! read-only compliance access to the journal (`journal`), and legal holds placed and
//! released on it (`holds`), behind bearer tokens kept as Argon2id hashes in a tokens file
//! ([`tokens`]) with roles, and a per-address limit on failed logins ([`limiter`]).
//! `levee admin token` makes tokens;
//! `levee status`, `switchover` and `failback` ([`commands`]) call the API ([`client`]).

pub mod api;
pub mod client;
pub mod commands;
mod console;
mod holds;
mod journal;
pub mod limiter;
pub mod listener;
mod switch;
pub mod tokens;

use std::sync::{Arc, Mutex};

use levee_config::{Admin, AdminTls};
use levee_journal::Journal;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use limiter::FailedLogins;
pub use tokens::{Caller, Role, Tokens, TokensError};

use crate::failover::driver::Failover;
use crate::metrics::StatusFn;

/// What the admin API works with.
pub struct Parts {
    pub failover: Option<Failover>,
    pub status: StatusFn,
    pub journal: Journal,
    pub replicator: Option<crate::replication::Replicator>,
    /// Catches the primary up on mail accepted while the replica was active.
    pub resync: Option<crate::resync::Resync>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("failover", &self.failover)
            .field("replicator", &self.replicator)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

/// Serves the admin API on `tcp` until `shutdown`.
pub async fn serve(
    tcp: TcpListener,
    config: &Admin,
    tokens: Tokens,
    tls: Option<TlsAcceptor>,
    parts: Parts,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(api::AdminState {
        tokens,
        limiter: Mutex::new(FailedLogins::new(
            config.max_failures,
            config.failure_window,
        )),
        switching: tokio::sync::Mutex::new(()),
        drain_timeout: config.drain_timeout,
        parts,
    });
    let tls = match config.tls {
        AdminTls::Implicit => tls,
        AdminTls::None => None,
    };
    let listener = listener::AdminListener::start(tcp, tls, shutdown.clone())?;
    let app = api::router(state).into_make_service_with_connect_info::<listener::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
