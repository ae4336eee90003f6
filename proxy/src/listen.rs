//! What the SMTP and IMAP fronts share: a connection slot taken before `accept` (past the
//! limit, clients wait in the kernel's backlog instead of costing memory here), a limit per
//! client address (past it, the connection is refused at once), session ids, bounded TLS
//! handshakes, and the end of a listener's sessions at shutdown.

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
use crate::per_ip::{IpSlot, PerIp};

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

/// Who may connect to one protocol's listeners: `max_connections` in all (the rest wait)
/// and `max_connections_per_ip` from one address (the rest are refused).
#[derive(Debug, Clone)]
pub struct Gate {
    pub proto: &'static str,
    pub slots: Arc<Semaphore>,
    pub per_ip: Arc<PerIp>,
}

impl Gate {
    pub fn new(proto: &'static str, max: usize, per_ip: usize) -> Gate {
        Gate {
            proto,
            slots: Arc::new(Semaphore::new(max)),
            per_ip: PerIp::new(per_ip),
        }
    }
}

/// A session's places: one of all, one of its address's. Dropping it gives both back.
#[derive(Debug)]
pub struct Slot {
    _global: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// A new client with its slot and session id.
#[derive(Debug)]
pub struct Client {
    pub permit: Slot,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub id: u64,
}

/// Waits for a free slot, then for a connection; `None` once levee shuts down. A
/// connection from an address that holds its limit already gets `refusal` (nothing on a
/// TLS listener, where plain text would not be understood) and is closed.
pub async fn next_client(
    listener: &TcpListener,
    gate: &Gate,
    refusal: &[u8],
    shutdown: &CancellationToken,
) -> Option<Client> {
    let global = tokio::select! {
        _ = shutdown.cancelled() => return None,
        permit = gate.slots.clone().acquire_owned() => permit.ok()?,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(ip) = gate.per_ip.admit(peer.ip()) else {
                        refuse(gate.proto, stream, peer, refusal);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
                    let permit = Slot { _global: global, _ip: ip };
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

/// Answers a connection over its address's limit without waiting for it: a fresh socket's
/// send buffer takes the one line, and a client that reads nothing loses only that line.
fn refuse(proto: &'static str, stream: TcpStream, peer: SocketAddr, refusal: &[u8]) {
    metrics::counter!(m::CONNECTIONS_REFUSED, "proto" => proto, "reason" => "per_ip").increment(1);
    tracing::debug!(%peer, proto, "too many connections from this address; refused");
    if !refusal.is_empty() {
        let _ = stream.try_write(refusal);
    }
    // Dropped unread: the kernel may answer with a reset, which is what a flood deserves.
    drop(stream);
}

/// Runs one session in `sessions`: counted in the session metrics under `proto`, inside
/// `span`, holding its connection slot until it ends.
pub fn spawn_session<F>(
    sessions: &mut JoinSet<()>,
    permit: Slot,
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
