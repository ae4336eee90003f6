//! Which mail server SMTP goes to: the active backend's, as the failover driver decides.
//!
//! A session takes the active backend when it connects, and checks again before each new
//! transaction (MAIL) and before AUTH: a session that started at the primary sends its
//! next message to the replica's MTA once the replica is active, on the same client
//! connection. A transaction stays with the backend it began on. The delivery worker asks
//! for every attempt. Idle pooled sessions of the backend that was left are closed, and a
//! session of it is never pooled again (see [`follow_active_backend`]).
//!
//! **While the replica is active, its MTA never gets the message for a local recipient**:
//! with `[replication]` the journal reaches the replica site, whose applier delivers every
//! local recipient of every record. levee hands the replica's MTA only the other recipients, so that nobody
//! gets a message twice. That needs `smtp.local_domains` to equal the replica's
//! `apply.local_domains`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use levee_config::{Config, ListenerKind};
use tokio::sync::watch;

use super::SmtpShared;
use super::envelope::is_local;
use super::session::Session;
use super::transaction::now_ms;
use super::upstream::{ClientIdentity, Upstream, UpstreamError};
use crate::failover::controller::Backend;
use crate::failover::driver::{Active, Failover};
use crate::metrics as m;

/// The state of a record whose every recipient the replica's applier delivers.
pub const BY_APPLIER: &str = "local recipients are delivered at the replica by the applier";

/// Where SMTP goes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Routes {
    config: Arc<Config>,
    failover: Option<Failover>,
    /// When a connection to the primary's MTA last failed (ms since the Unix epoch).
    primary_failed_ms: Arc<AtomicU64>,
}

impl Routes {
    pub fn new(config: Arc<Config>, failover: Option<Failover>) -> Routes {
        Routes {
            config,
            failover,
            // What happened to the primary before levee started is not known.
            primary_failed_ms: Arc::new(AtomicU64::new(now_ms())),
        }
    }

    /// Since when the primary has been answering (ms since the Unix epoch): the last time
    /// a connection to its MTA failed (or levee started), or now while its health probes
    /// find it down.
    pub fn primary_answering_since_ms(&self) -> u64 {
        let probed_down =
            (self.failover.as_ref()).is_some_and(|f| f.health().primary_ok == Some(false));
        if probed_down {
            return now_ms();
        }
        self.primary_failed_ms.load(Ordering::Relaxed)
    }

    /// New transactions wait while an admin's switch makes the new site ready.
    pub fn draining(&self) -> bool {
        self.failover.as_ref().is_some_and(Failover::draining)
    }

    /// Waits for a switch under way to end, at most `limit`; false if it has not.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        match &self.failover {
            Some(failover) => failover.wait_drained(limit).await,
            None => true,
        }
    }

    /// The backend new transactions go to (the primary without failover).
    pub fn active(&self) -> Backend {
        self.failover
            .as_ref()
            .map_or(Backend::Primary, |f| f.active().backend)
    }

    /// Wakes on every change of the active backend; `None` without failover.
    pub fn watch(&self) -> Option<watch::Receiver<Active>> {
        self.failover.as_ref().map(Failover::watch)
    }

    /// The SMTP server of `backend` for a listener of `kind` (submission falls back to the
    /// site's MX-style server; a backend that is not configured to the primary).
    pub fn addr(&self, backend: Backend, kind: ListenerKind) -> SocketAddr {
        let upstream = &self.config.upstream;
        let site = match backend {
            Backend::Replica => upstream.replica.as_ref().unwrap_or(&upstream.primary),
            Backend::Primary => &upstream.primary,
        };
        site.smtp_for(kind)
    }

    /// Every SMTP server address of `backend`.
    pub fn addrs(&self, backend: Backend) -> Vec<SocketAddr> {
        let mut addrs = vec![
            self.addr(backend, ListenerKind::Relay),
            self.addr(backend, ListenerKind::Submission),
        ];
        addrs.dedup();
        addrs
    }

    /// Whether the upstream of `backend` is handed only the recipients outside
    /// `smtp.local_domains` (the replica, with the journal streamed there).
    pub fn applier_delivers_local(&self, backend: Backend) -> bool {
        backend == Backend::Replica && self.config.replication.is_some()
    }

    /// Whether `rcpt` must not be handed to the upstream of `backend`.
    pub fn left_to_applier(&self, backend: Backend, rcpt: &str) -> bool {
        self.applier_delivers_local(backend) && is_local(&self.config.smtp.local_domains, rcpt)
    }

    /// Tells the failover driver that `backend` failed to connect or broke off; refusals
    /// and replies the server chose to give are no failure of the site.
    pub fn failed(&self, backend: Backend, err: &UpstreamError) {
        if !err.is_outage() {
            return;
        }
        if backend == Backend::Primary {
            self.primary_failed_ms
                .fetch_max(now_ms(), Ordering::Relaxed);
        }
        if let Some(failover) = &self.failover {
            failover.upstream_error(backend);
        }
    }

    /// Says at start what the configuration makes of mail while the replica is active.
    pub fn warn_about_config(&self) {
        if self.failover.is_none() {
            return;
        }
        if self.config.replication.is_none() {
            tracing::warn!(
                "failover without [replication]: while the replica is active its mail server \
                 gets every recipient, and mail journaled here reaches it only by retries"
            );
        } else if self.config.smtp.local_domains.is_empty() {
            tracing::warn!(
                "failover is configured but smtp.local_domains is empty: while the replica is \
                 active levee cannot leave local recipients to the replica's applier, so they \
                 may get a message twice; set it to the replica's apply.local_domains"
            );
        }
    }
}

/// Keeps the upstream pool on the active backend: at start and after every change, idle
/// sessions to the other backend's servers are closed and sessions to them are no longer
/// taken back. Runs until shutdown; returns at once without failover.
pub async fn follow_active_backend(shared: Arc<SmtpShared>) {
    let Some(mut watch) = shared.routes.watch() else {
        return;
    };
    loop {
        let active = watch.borrow_and_update().backend;
        let closed = shared.upstreams.keep_only(&shared.routes.addrs(active));
        if closed > 0 {
            tracing::info!(
                ?active,
                closed,
                "idle upstream sessions of the other backend closed"
            );
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = watch.changed() => if changed.is_err() { return },
        }
    }
}

/// Opens a session to `addr` for a client that has already said EHLO (and perhaps
/// authenticated): a pooled or new session greeted as the client, or, for an authenticated
/// client, a new one that passes its login with XCLIENT and is never pooled.
pub(super) async fn reconnect(
    shared: &SmtpShared,
    addr: SocketAddr,
    identity: ClientIdentity,
) -> Result<Upstream, UpstreamError> {
    let config = &shared.config.smtp;
    let (connect, reply, name) = (
        config.connect_timeout,
        config.upstream_timeout,
        &config.hostname,
    );
    let helo = identity.helo.clone().unwrap_or_else(|| name.clone());
    if identity.login.is_some() {
        let mut upstream = Upstream::open(addr, connect, reply, name, &identity).await?;
        upstream.forbid_reuse();
        return Ok(upstream);
    }
    let identity = ClientIdentity {
        helo: None,
        ..identity
    };
    let mut upstream = (shared.upstreams)
        .checkout(addr, connect, reply, name, &identity)
        .await?;
    upstream.hello(&helo).await?;
    Ok(upstream)
}

/// Counts an upstream failure of a session and tells the failover driver.
pub(super) fn note_failure(shared: &SmtpShared, backend: Backend, err: &UpstreamError) {
    metrics::counter!(m::UPSTREAM_FAILURES).increment(1);
    shared.routes.failed(backend, err);
}

impl Session {
    /// Before a new transaction or AUTH: when the active backend is not the one this
    /// session's upstream belongs to, moves the session there (greeted as the client, its
    /// login passed with XCLIENT when it authenticated). Without a reachable server there
    /// the session goes on without one, as it would at the primary.
    pub(super) async fn follow_active(&mut self) {
        let active = self.shared.routes.active();
        if active == self.backend {
            return;
        }
        tracing::info!(from = ?self.backend, to = ?active, "session follows the active backend");
        self.leave_backend();
        let Some(helo) = self.helo.clone() else {
            // Not greeted yet: EHLO connects.
            return;
        };
        let identity = ClientIdentity {
            addr: Some(self.peer),
            helo: Some(helo),
            login: self.auth_user.clone().filter(|login| !login.is_empty()),
        };
        let addr = self.shared.routes.addr(active, self.listener.kind);
        match reconnect(&self.shared, addr, identity).await {
            Ok(upstream) => self.upstream = Some(upstream),
            Err(err) => {
                note_failure(&self.shared, active, &err);
                tracing::warn!(%err, backend = ?active, "upstream unavailable");
            }
        }
    }

    /// Drops the upstream of the backend that is no longer active (politely, in the
    /// background, never into the pool) and takes the active one.
    pub(super) fn leave_backend(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
        if let Some(upstream) = self.upstream.take() {
            tokio::spawn(upstream.quit());
        }
        self.backend = self.shared.routes.active();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_config::ConfigFile;

    /// A configuration with a replica site (no submission server there); streaming the
    /// journal to it when `replication`.
    fn routes(dir: &std::path::Path, replication: bool) -> Routes {
        std::fs::write(dir.join("ca.pem"), "x").unwrap();
        std::fs::write(dir.join("token"), "0123456789abcdef0123").unwrap();
        let mut text = format!(
            "[node]\ndata_dir = \"{d}\"\n\n[upstream.primary]\nsmtp = \"127.0.0.1:25\"\n\
             submission = \"127.0.0.1:587\"\n\n[upstream.replica]\nsmtp = \"127.0.0.2:25\"\n\n\
             [smtp]\nlocal_domains = [\"example.org\"]\n\n\
             [[smtp.listen]]\naddr = \"127.0.0.1:0\"\nkind = \"relay\"\ntls = \"none\"\n",
            d = dir.display()
        );
        if replication {
            text.push_str(&format!(
                "\n[replication]\nreplica = \"127.0.0.2:7400\"\nserver_name = \"r\"\n\
                 ca = \"{d}/ca.pem\"\ntoken_file = \"{d}/token\"\n",
                d = dir.display()
            ));
        }
        let config = Config::from_toml(&text).expect("valid config");
        Routes::new(Arc::new(config), None)
    }

    #[test]
    fn each_backend_has_its_servers_and_submission_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let routes = routes(dir.path(), true);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(routes.active(), Backend::Primary, "without failover");
        assert_eq!(
            routes.addr(Backend::Primary, ListenerKind::Submission),
            addr("127.0.0.1:587")
        );
        assert_eq!(
            routes.addr(Backend::Replica, ListenerKind::Submission),
            addr("127.0.0.2:25")
        );
        assert_eq!(routes.addrs(Backend::Replica), vec![addr("127.0.0.2:25")]);
        assert_eq!(routes.addrs(Backend::Primary).len(), 2);
    }

    #[test]
    fn only_local_recipients_at_the_replica_are_left_to_the_applier() {
        let dir = tempfile::tempdir().unwrap();
        let streamed = routes(dir.path(), true);
        assert!(streamed.left_to_applier(Backend::Replica, "alice@EXAMPLE.org"));
        assert!(!streamed.left_to_applier(Backend::Replica, "far@elsewhere.example"));
        assert!(!streamed.left_to_applier(Backend::Primary, "alice@example.org"));
        // Without the journal stream nothing reaches the replica but through its MTA.
        let alone = routes(dir.path(), false);
        assert!(!alone.left_to_applier(Backend::Replica, "alice@example.org"));
    }
}
