//! What the SMTP and IMAP fronts share: a connection slot taken before `accept` (past the
//! limit, clients wait in the kernel's backlog instead of costing memory here), session
//! ids, bounded TLS handshakes, and the end of a listener's sessions at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use crate::metrics as m;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);
static OPEN_SMTP: AtomicU64 = AtomicU64::new(0);
static OPEN_IMAP: AtomicU64 = AtomicU64::new(0);

/// Client sessions open now in this process, by protocol: (SMTP, IMAP).
pub fn open_sessions() -> (u64, u64) {
    (
        OPEN_SMTP.load(Ordering::Relaxed),
        OPEN_IMAP.load(Ordering::Relaxed),
    )
}

/// Counts one open session of `proto` for as long as it lives, however the task ends.
struct Open {
    proto: &'static str,
    count: &'static AtomicU64,
}

impl Open {
    fn new(proto: &'static str) -> Open {
        let count = if proto == "imap" {
            &OPEN_IMAP
        } else {
            &OPEN_SMTP
        };
        count.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::SESSIONS_ACTIVE, "proto" => proto).increment(1.0);
        metrics::counter!(m::SESSIONS_TOTAL, "proto" => proto).increment(1);
        Open { proto, count }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::SESSIONS_ACTIVE, "proto" => self.proto).decrement(1.0);
    }
}

/// A new client with its slot and session id.
#[derive(Debug)]
pub struct Client {
    pub permit: OwnedSemaphorePermit,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub id: u64,
}

/// Waits for a free slot, then for a connection; `None` once levee shuts down.
pub async fn next_client(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<Client> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = slots.clone().acquire_owned() => permit.ok()?,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
                    return Some(Client { permit, stream, peer, id });
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Runs one session in `sessions`: counted in the session metrics under `proto`, inside
/// `span`, holding its connection slot until it ends.
pub fn spawn_session<F>(
    sessions: &mut JoinSet<()>,
    permit: OwnedSemaphorePermit,
    proto: &'static str,
    span: tracing::Span,
    session: F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    while sessions.try_join_next().is_some() {}
    sessions.spawn(
        async move {
            let open = Open::new(proto);
            session.await;
            drop(open);
            drop(permit);
        }
        .instrument(span),
    );
}

/// A TLS handshake bounded by `limit`; failures are counted, logged and end the session.
pub async fn handshake(
    acceptor: Option<&TlsAcceptor>,
    stream: TcpStream,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = acceptor?;
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(err)) => {
            metrics::counter!(m::TLS_FAILURES).increment(1);
            tracing::info!(%err, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!(m::TLS_FAILURES).increment(1);
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}

/// Waits up to `grace` for a listener's sessions to end, then aborts the rest.
pub async fn finish<T: 'static>(mut sessions: JoinSet<T>, grace: Duration) {
    if tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            remaining = sessions.len(),
            "grace period over; aborting sessions"
        );
        sessions.shutdown().await;
    }
}
