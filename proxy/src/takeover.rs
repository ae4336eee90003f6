//! A restart without refusing anyone: `levee run --take-over` starts beside the levee it
//! replaces (a new binary, say) and takes its place.
//!
//! Every listener levee opens allows a second one on the same address (`SO_REUSEPORT`,
//! which Linux grants only to processes of the same user). The successor binds its
//! listeners first, while its predecessor still serves, and then waits for the journal,
//! which one process holds at a time. Stopped with SIGTERM, the predecessor closes its
//! listeners at once (new clients now queue in the successor's backlog), lets every SMTP
//! transaction in progress finish and tells idle SMTP clients 421, tells each IMAP client
//! `* BYE [UNAVAILABLE]` as soon as nothing of its is in flight, flushes the journal and
//! exits. The successor opens the journal and serves the queued clients; IMAP clients log
//! in again on their own. An IMAP session cannot move between processes with its
//! connection: its TLS state lives in the old process, and the journal admits one writer.
//!
//! Listeners configured with port 0 get a port only when bound; they are not bound ahead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use levee_config::Config;
use tokio::net::{TcpListener, TcpSocket};

/// A listener on `addr` that a successor may bind as well while this process runs.
pub fn reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Listeners bound before the journal could be opened, by configured address.
#[derive(Debug, Default)]
pub struct Prebound(HashMap<SocketAddr, TcpListener>);

impl Prebound {
    /// Binds every listener of `config` that has a fixed port.
    pub fn bind(config: &Config) -> Result<Prebound, crate::RunError> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        addrs.extend(config.smtp.listen.iter().map(|l| l.addr));
        addrs.extend(config.imap.listen.iter().map(|l| l.addr));
        addrs.extend(config.metrics.listen);
        addrs.extend(config.admin.as_ref().map(|a| a.listen));
        let mut bound = HashMap::new();
        for addr in addrs.into_iter().filter(|a| a.port() != 0) {
            let listener =
                reusable(addr).map_err(|source| crate::RunError::Bind { addr, source })?;
            bound.insert(addr, listener);
        }
        tracing::info!(
            listeners = bound.len(),
            "listening beside the levee being replaced; new clients wait until it hands over the journal"
        );
        Ok(Prebound(bound))
    }

    /// The listener bound ahead for `addr`, if any.
    pub fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        self.0.remove(&addr)
    }
}

/// How long a successor waits for the journal: its predecessor's SMTP grace, and room
/// for its IMAP sessions, the final flush and sled letting go of its lock.
pub fn lock_wait(config: &Config) -> Duration {
    config.smtp.shutdown_grace + Duration::from_secs(30)
}
