//! The admin API's listener: TCP, with TLS handshakes done in their own tasks (bounded in
//! time) so that a client stalling in its handshake holds up nobody else.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handed over but not yet taken by the HTTP server.
const QUEUE: usize = 64;
/// TLS handshakes under way at once; a connection beyond that is closed at once, so a flood
/// of stalled handshakes costs a bounded number of tasks.
const HANDSHAKES: usize = 128;

pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Connections ready for HTTP, TLS done.
pub struct AdminListener {
    ready: mpsc::Receiver<(Box<dyn Conn>, SocketAddr)>,
    local: SocketAddr,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The client's address, for the failed-login limit and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, AdminListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl AdminListener {
    /// Accepts on `tcp` until `shutdown`; with `tls`, each connection is handshaken first.
    pub fn start(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: CancellationToken,
    ) -> std::io::Result<AdminListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(QUEUE);
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            tracing::warn!(%err, "admin API: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "admin API: too many connections being set up; closed");
                    continue;
                };
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let conn: Box<dyn Conn> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => Box::new(tls),
                                Ok(Err(err)) => {
                                    tracing::info!(%peer, %err, "admin API: TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "admin API: TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let _ = tx.send((conn, peer)).await;
                });
            }
        });
        Ok(AdminListener { ready, local })
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Box<dyn Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept loop stopped (shutdown): wait for the server's own shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
