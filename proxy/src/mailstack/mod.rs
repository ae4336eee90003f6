//! Real Postfix + Dovecot instances on loopback, for `levee demo`, end-to-end tests and benchmarks.
//!
//! A [`MailStack`] owns a directory of its own (config, queue, sockets, logs, Maildirs) and five
//! free ports on 127.0.0.1, so several stacks ("primary", "replica") run side by side. Dovecot
//! serves IMAP, LMTP and SASL auth; Postfix accepts SMTP (MX role) and submission (SASL required)
//! and delivers the stack's virtual domain to that Dovecot over LMTP. Everything else is
//! discarded, so a test box never sends mail out.
//!
//! Requires root (Postfix's `-c` and Dovecot's privilege separation) and the Debian packages
//! `postfix dovecot-imapd dovecot-lmtpd swaks`; see [`check_installed`] and [`install_with_apt`].
//! The API is blocking on purpose: starting and killing daemons is a few milliseconds of work.

mod config;
mod daemons;
mod install;
mod process;
mod setup;

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use install::{check_installed, install_with_apt};

use config::{Layout, Ports};

/// What a stack looks like: its name (used in the directory and host name), its one virtual
/// domain and its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// Short name such as "primary" or "replica" (letters, digits, `-`).
    pub name: String,
    /// The virtual mail domain, e.g. "example.test".
    pub domain: String,
    /// `(localpart, password)` of every mailbox; nobody else exists (RCPT answers 550).
    pub users: Vec<(String, String)>,
    /// Tune for load: Dovecot login processes in high-performance mode (`service_count = 0`),
    /// imap processes serving up to 50 sessions each, process and client limits raised on both
    /// daemons.
    pub benchmark_mode: bool,
}

impl StackSpec {
    /// Domain `example.test`, users alice/bob/carol with passwords `alice-pw`, `bob-pw`, `carol-pw`.
    pub fn new(name: &str) -> Self {
        StackSpec {
            name: name.to_string(),
            domain: "example.test".to_string(),
            users: ["alice", "bob", "carol"]
                .iter()
                .map(|u| (u.to_string(), format!("{u}-pw")))
                .collect(),
            benchmark_mode: false,
        }
    }
}

/// Why a stack could not be set up, started or stopped. Daemon failures carry the tail of the
/// daemon's own log, which is usually the only place the real reason is written.
#[derive(Debug, thiserror::Error)]
pub enum MailStackError {
    #[error(
        "mail servers not installed: {missing}\n  install them (as root) with:\n    {install_command}"
    )]
    NotInstalled {
        missing: String,
        install_command: String,
    },
    #[error("{action} needs root: run it as root")]
    NotRoot { action: &'static str },
    #[error("invalid stack spec: {0}")]
    InvalidSpec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{daemon}: `{command}` failed ({status})\n--- log tail ---\n{log_tail}")]
    CommandFailed {
        daemon: &'static str,
        command: String,
        status: String,
        log_tail: String,
    },
    #[error("{daemon} did not become ready: {detail}\n--- log tail ---\n{log_tail}")]
    NotReady {
        daemon: &'static str,
        detail: String,
        log_tail: String,
    },
    #[error("{daemon} did not stop: {detail}")]
    StopFailed {
        daemon: &'static str,
        detail: String,
    },
    #[error("no such user in this stack: {0:?}")]
    UnknownUser(String),
}

impl MailStackError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| MailStackError::Io { context, source }
    }

    /// A listener could not bind: another process took one of our ports between
    /// [`free_port`] and the daemon's bind. Worth a retry with fresh ports.
    fn is_port_clash(&self) -> bool {
        matches!(self, MailStackError::NotReady { log_tail, .. } | MailStackError::CommandFailed { log_tail, .. }
            if log_tail.contains("Address already in use"))
    }
}

/// Ports handed out by [`free_port`] in this process, never handed out twice, so stacks started
/// concurrently (parallel tests) never pick the same port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A currently free TCP port on 127.0.0.1 (bound to port 0, then released). Never returns the
/// same port twice within one process.
pub fn free_port() -> Result<u16, MailStackError> {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(MailStackError::io("binding 127.0.0.1:0"))?;
        let port = listener
            .local_addr()
            .map_err(MailStackError::io("local_addr of 127.0.0.1:0"))?
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(MailStackError::Io {
        context: "finding a free port".into(),
        source: std::io::Error::other("every port offered by the kernel was already handed out"),
    })
}

/// A running Postfix + Dovecot pair. Dropping it kills both and removes its directory, also
/// while a test panics.
#[derive(Debug)]
pub struct MailStack {
    spec: StackSpec,
    layout: Layout,
    ports: Ports,
    dovecot: Option<process::Daemon>,
    postfix: Option<process::Daemon>,
}

impl MailStack {
    /// Generates the configuration, starts Dovecot then Postfix, and returns once IMAP, LMTP,
    /// auth and both SMTP listeners answer (bounded: 15 s per daemon). Retries with
    /// fresh ports if one was taken in the meantime.
    pub fn start(spec: StackSpec) -> Result<MailStack, MailStackError> {
        check_installed()?;
        if process::effective_uid() != Some(0) {
            return Err(MailStackError::NotRoot {
                action: "starting a mail stack",
            });
        }
        setup::validate(&spec)?;
        setup::reap_stale_stacks();
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(spec.clone()) {
                Ok(stack) => {
                    tracing::info!(stack = %spec.name, dir = %stack.dir().display(), elapsed = ?started.elapsed(), "mail stack ready");
                    return Ok(stack);
                }
                Err(e) if attempt < 3 && e.is_port_clash() => {
                    tracing::warn!(stack = %spec.name, error = %e, "port taken, retrying with fresh ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(spec: StackSpec) -> Result<MailStack, MailStackError> {
        let ports = Ports {
            smtp: free_port()?,
            submission: free_port()?,
            imap: free_port()?,
            lmtp: free_port()?,
            auth: free_port()?,
        };
        let root = setup::create_root(&spec.name)?;
        // From here on Drop cleans up whatever was started, whichever step fails.
        let mut stack = MailStack {
            spec,
            layout: Layout { root },
            ports,
            dovecot: None,
            postfix: None,
        };
        setup::write_files(&stack.spec, &stack.layout, &stack.ports)?;
        stack.start_dovecot()?;
        stack.start_postfix()?;
        Ok(stack)
    }

    /// The stack's own directory (config, queue, logs, Maildirs).
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// Postfix smtpd in the MX role (port 25): accepts mail for the domain from anyone,
    /// relays only for SASL-authenticated clients.
    pub fn smtp_addr(&self) -> SocketAddr {
        Self::addr(self.ports.smtp)
    }

    /// Postfix smtpd in the submission role (port 587): nothing without SASL AUTH.
    pub fn submission_addr(&self) -> SocketAddr {
        Self::addr(self.ports.submission)
    }

    pub fn imap_addr(&self) -> SocketAddr {
        Self::addr(self.ports.imap)
    }

    pub fn lmtp_addr(&self) -> SocketAddr {
        Self::addr(self.ports.lmtp)
    }

    /// Dovecot's master user: it may log in as any user (SASL PLAIN with the user as
    /// authorization id, or `user*levee-master`).
    pub fn master_user(&self) -> &str {
        config::MASTER_USER
    }

    /// A file holding only the master user's password (random per stack, root-only).
    pub fn master_password_file(&self) -> PathBuf {
        self.layout.master_password()
    }

    pub fn domain(&self) -> &str {
        &self.spec.domain
    }

    pub fn users(&self) -> &[(String, String)] {
        &self.spec.users
    }

    /// The user's Maildir root (INBOX is `new/` and `cur/` right below it). Created by Dovecot
    /// on first delivery or login.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.layout.home(user).join("Maildir")
    }

    /// Raw bytes of every INBOX message (files in `new/` and `cur/`), sorted by file name.
    /// Empty before the first delivery. Files hold what IMAP `BODY[]` returns: CRLF line ends
    /// (`mail_save_crlf = yes`), the message as sent with Return-Path, Delivered-To and two
    /// Received headers prepended (Postfix turns bare LF into CRLF).
    pub fn inbox_messages(&self, user: &str) -> Result<Vec<Vec<u8>>, MailStackError> {
        if !self.spec.users.iter().any(|(u, _)| u == user) {
            return Err(MailStackError::UnknownUser(user.to_string()));
        }
        setup::read_maildir_inbox(&self.maildir(user))
    }

    /// Last lines of Postfix's log and of `postfix start-fg`'s output, for failure messages.
    pub fn postfix_log(&self) -> String {
        setup::logs(&[self.layout.postfix_start_log(), self.layout.postfix_log()])
    }

    /// Last lines of Dovecot's log and of its stderr, for failure messages.
    pub fn dovecot_log(&self) -> String {
        setup::logs(&[self.layout.dovecot_stderr(), self.layout.dovecot_log()])
    }

    /// Shuts everything down now; the same as dropping the stack.
    pub fn stop(self) {}

    fn teardown(&mut self) {
        if let Err(e) = self.stop_postfix() {
            tracing::warn!(stack = %self.spec.name, error = %e, "stopping postfix");
        }
        if let Err(e) = self.kill_dovecot() {
            tracing::warn!(stack = %self.spec.name, error = %e, "stopping dovecot");
        }
        if let Err(e) = fs::remove_dir_all(&self.layout.root) {
            tracing::warn!(dir = %self.layout.root.display(), error = %e, "removing mail stack dir");
        }
    }
}

impl Drop for MailStack {
    fn drop(&mut self) {
        self.teardown();
    }
}
