//! The IMAP front: listeners, and one task per client session, each with its own
//! connection to the IMAP server.
//!
//! levee terminates TLS (STARTTLS or implicit) and speaks plain IMAP to the server behind
//! it; everything between login and logout passes through byte for byte, read on the way
//! by [`session::Session`].

pub mod caps;
pub mod changes;
mod commands;
pub mod conn;
mod continuity;
pub mod framing;
mod hibernate;
pub mod homecoming;
pub mod identity;
pub mod known_at_replica;
pub mod migrate;
pub mod modseq;
mod pump;
pub mod rebuild;
pub mod registry;
pub mod responses;
pub mod rewrite;
pub mod search_return;
pub mod seqmap;
pub mod session;
pub mod state;
#[cfg(test)]
mod test_support;
pub mod tracker;
pub mod uidmap;
mod upstream;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use levee_config::{Config, ImapListener, TlsMode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::session::{Next, Session};
use crate::failover::controller::Backend;
use crate::failover::driver::Failover;
use crate::listen::{self, Client};
use crate::metrics as m;

/// What every IMAP session shares.
pub struct ImapShared {
    pub config: Arc<Config>,
    pub tls: Option<TlsAcceptor>,
    pub shutdown: CancellationToken,
    /// The active backend, when a replica site is configured.
    pub failover: Option<Failover>,
    /// Followed mailboxes, journaled changes and UID translations.
    pub registry: Arc<registry::Registry>,
    /// Sessions being rebuilt on another server at once (see [`REBUILDS_AT_ONCE`]).
    pub rebuilds: Semaphore,
}

/// How many sessions log in again at the same time after a failover. Moving 9,000 idle
/// sessions here (BENCHMARKS.md) took 6.5 s with 16, 5.3 s with 64 and 5.3 s with 128: past
/// 64 the replica's Dovecot is the bound, and more at once only queue there.
pub const REBUILDS_AT_ONCE: usize = 64;

impl ImapShared {
    /// The IMAP server of `backend`.
    pub fn imap_addr(&self, backend: Backend) -> Option<SocketAddr> {
        match backend {
            Backend::Primary => self.config.upstream.primary.imap,
            Backend::Replica => self.config.upstream.replica.as_ref()?.imap,
        }
    }

    /// What sessions add to the server's mod-sequences in the current epoch.
    pub fn modseq_shift(&self) -> modseq::Shift {
        self.failover.as_ref().map_or(modseq::Shift(0), |f| {
            modseq::Shift::at_epoch(f.active().epoch)
        })
    }

    /// The backend new sessions go to.
    pub fn active_backend(&self) -> Backend {
        self.failover
            .as_ref()
            .map_or(Backend::Primary, |f| f.active().backend)
    }
}

impl std::fmt::Debug for ImapShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapShared")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Accepts on `listener` until shutdown; returns once every session has ended.
pub async fn serve_listener(
    listener: TcpListener,
    spec: ImapListener,
    shared: Arc<ImapShared>,
    gate: listen::Gate,
) {
    let mut sessions = JoinSet::new();
    let refusal: &[u8] = match spec.tls {
        TlsMode::Implicit => b"",
        _ => b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
    };
    while let Some(client) = listen::next_client(&listener, &gate, refusal, &shared.shutdown).await
    {
        let Client {
            permit,
            stream,
            peer,
            id,
        } = client;
        let span = tracing::info_span!("session", session = id, %peer, proto = "imap");
        let session = handle(stream, peer, spec.tls, shared.clone());
        listen::spawn_session(&mut sessions, permit, "imap", span, session);
    }
    drop(listener);
    tracing::info!(listener = %spec.addr, "no longer accepting IMAP");
    // Each session says BYE once its commands in flight are answered: the SMTP grace
    // bounds that too.
    listen::finish(sessions, shared.config.smtp.shutdown_grace).await;
}

async fn handle(stream: TcpStream, peer: SocketAddr, tls: TlsMode, shared: Arc<ImapShared>) {
    let implicit = tls == TlsMode::Implicit;
    let backend = shared.active_backend();
    let upstream = Box::pin(connect_upstream(&shared, backend)).await;
    if implicit {
        let Some(client) = Box::pin(handshake(&shared, stream)).await else {
            return;
        };
        // Boxed, like the Session: a plain session's task must not reserve room for them.
        let mut client = Box::new(client);
        match upstream {
            Some(upstream) => {
                let mut session = Box::new(Session::new(shared.clone(), upstream, backend, true));
                session.serve(&mut client).await;
            }
            None => unavailable(&mut client).await,
        }
        return;
    }
    let mut client = stream;
    let Some(upstream) = upstream else {
        unavailable(&mut client).await;
        return;
    };
    let mut session = Box::new(Session::new(shared.clone(), upstream, backend, false));
    if session.serve(&mut client).await == Next::StartTls
        && let Some(tls) = Box::pin(handshake(&shared, client)).await
    {
        let mut tls = Box::new(tls);
        session.upgraded();
        session.serve(&mut tls).await;
    }
    tracing::debug!(%peer, "IMAP session ended");
}

async fn connect_upstream(shared: &ImapShared, backend: Backend) -> Option<TcpStream> {
    let addr = shared.imap_addr(backend)?;
    let limit = shared.config.imap.connect_timeout;
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Ok(Err(err)) => {
            metrics::counter!(m::UPSTREAM_FAILURES).increment(1);
            tracing::warn!(%addr, %err, "IMAP server unreachable");
            None
        }
        Err(_) => {
            metrics::counter!(m::UPSTREAM_FAILURES).increment(1);
            tracing::warn!(%addr, "IMAP server did not answer the connection in time");
            None
        }
    }
}

async fn unavailable<S: tokio::io::AsyncWrite + Unpin>(client: &mut S) {
    let _ = client
        .write_all(b"* BYE [UNAVAILABLE] The mail server is not reachable; try again shortly\r\n")
        .await;
    let _ = client.shutdown().await;
}

/// TLS handshake, bounded by the login timeout.
async fn handshake(
    shared: &ImapShared,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    listen::handshake(
        shared.tls.as_ref(),
        stream,
        shared.config.imap.login_timeout,
    )
    .await
}
