//! The SMTP front: listeners, and one task per client session.
//!
//! A connection slot is taken *before* `accept`, so past `max_connections` new clients wait
//! in the kernel's backlog instead of costing memory here. Each session runs in its own
//! span (`session`, `peer`, `proto`) and ends with 421 when levee shuts down.

pub(crate) mod auth;
pub mod connection;
pub mod envelope;
mod handoff;
pub mod pool;
pub mod reply;
mod resend;
pub mod route;
pub mod session;
mod transaction;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use levee_config::{Config, ListenerKind, TlsMode};
use levee_journal::Journal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::connection::Connection;
use self::session::{Next, Session};
use crate::listen::{self, Client};

pub use transaction::{message_id, now_ms};

/// What every session shares.
pub struct SmtpShared {
    pub config: Arc<Config>,
    pub journal: Journal,
    pub tls: Option<TlsAcceptor>,
    pub shutdown: CancellationToken,
    /// Wakes the delivery worker when a message is deferred.
    pub delivery: Arc<Notify>,
    /// The journal stream to the replica site, when configured.
    pub replicator: Option<crate::replication::Replicator>,
    /// Idle upstream sessions handed from one client session to the next.
    pub upstreams: pool::UpstreamPool,
    /// Which site's mail servers sessions talk to.
    pub routes: route::Routes,
}

impl std::fmt::Debug for SmtpShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpShared")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The listener a session came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub kind: ListenerKind,
    pub tls: TlsMode,
    /// `relay@127.0.0.1:25`, recorded in the journal.
    pub name: String,
}

/// Accepts on `listener` until shutdown; returns once every session has ended (or the
/// grace period is over and the rest were aborted).
pub async fn serve_listener(
    listener: TcpListener,
    info: ListenerInfo,
    shared: Arc<SmtpShared>,
    gate: listen::Gate,
) {
    let mut sessions = JoinSet::new();
    let refusal = match info.tls {
        TlsMode::Implicit => String::new(),
        _ => format!(
            "421 4.7.0 {} Too many connections from your address, try again later\r\n",
            shared.config.smtp.hostname
        ),
    };
    while let Some(client) =
        listen::next_client(&listener, &gate, refusal.as_bytes(), &shared.shutdown).await
    {
        let Client {
            permit,
            stream,
            peer,
            id,
        } = client;
        let span = tracing::info_span!("session", session = id, %peer, proto = "smtp", listener = %info.name);
        let session = handle(stream, peer, info.clone(), shared.clone());
        listen::spawn_session(&mut sessions, permit, "smtp", span, session);
    }
    drop(listener);
    tracing::info!(listener = %info.name, "no longer accepting");
    listen::finish(sessions, shared.config.smtp.shutdown_grace).await;
}

async fn handle(stream: TcpStream, peer: SocketAddr, info: ListenerInfo, shared: Arc<SmtpShared>) {
    let implicit = info.tls == TlsMode::Implicit;
    let mut session = Session::new(shared.clone(), info, peer, implicit);
    session.connect_upstream_early();
    if implicit {
        if let Some(tls) = handshake(&shared, stream).await {
            let mut conn = Connection::new(tls);
            greet_and_serve(&mut session, &mut conn).await;
        }
        return;
    }
    let mut conn = Connection::new(stream);
    if greet_and_serve(&mut session, &mut conn).await == Next::StartTls {
        let stream = conn.into_stream();
        if let Some(tls) = handshake(&shared, stream).await {
            session.upgraded();
            let mut conn = Connection::new(tls);
            session.serve(&mut conn).await;
        }
    }
}

async fn greet_and_serve<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut Session,
    conn: &mut Connection<S>,
) -> Next {
    conn.reply(&session.greeting());
    session.serve(conn).await
}

/// TLS handshake, bounded by the command timeout.
async fn handshake(
    shared: &SmtpShared,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    listen::handshake(
        shared.tls.as_ref(),
        stream,
        shared.config.smtp.command_timeout,
    )
    .await
}

/// `relay@127.0.0.1:25`.
pub fn listener_name(kind: ListenerKind, addr: SocketAddr) -> String {
    let kind = match kind {
        ListenerKind::Relay => "relay",
        ListenerKind::Submission => "submission",
    };
    format!("{kind}@{addr}")
}
