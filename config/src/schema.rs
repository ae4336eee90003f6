//! The shape of levee's TOML file, with the defaults a production site starts from.
//!
//! Every struct denies unknown fields: a misspelt key is an error that names it, never a
//! setting silently ignored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: Node,
    pub upstream: Upstreams,
    #[serde(default)]
    pub smtp: Smtp,
    #[serde(default)]
    pub imap: crate::Imap,
    #[serde(default)]
    pub failover: crate::Failover,
    /// Certificate and key for STARTTLS and implicit TLS towards clients.
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub delivery: Delivery,
    /// Streaming of the journal to a replica site; none when absent.
    #[serde(default)]
    pub replication: Option<crate::Replication>,
    #[serde(default)]
    pub metrics: Metrics,
    /// E-mail reports to the admins; none when absent.
    #[serde(default)]
    pub alerts: Option<crate::Alerts>,
    /// The admin API; none when absent.
    #[serde(default)]
    pub admin: Option<crate::Admin>,
    /// Encryption at rest of the journal.
    #[serde(default)]
    pub journal: crate::JournalSection,
    /// Pruning of old journaled mail; everything is kept when absent.
    #[serde(default)]
    pub retention: Option<crate::Retention>,
    #[serde(default)]
    pub log: Log,
}

/// Identity and storage of this levee node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Node {
    /// Names this node in journal records and, later, in the replication stream.
    pub id: String,
    /// Where the journal lives (`<data_dir>/journal`).
    pub data_dir: PathBuf,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            id: "levee-1".into(),
            data_dir: PathBuf::from("/var/lib/levee"),
        }
    }
}

/// The mail servers levee fronts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub primary: Backend,
    /// The replica site's mail servers: clients move there on failover. No failover
    /// without it.
    #[serde(default)]
    pub replica: Option<Backend>,
}

/// One backend site: its SMTP services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The MX-style smtpd (port 25 role): receives relay/MX sessions and every retry.
    pub smtp: SocketAddr,
    /// The submission smtpd (port 587 role). Defaults to `smtp`.
    #[serde(default)]
    pub submission: Option<SocketAddr>,
    /// The IMAP server (plain IMAP; levee itself speaks TLS to clients). Needed when
    /// `[imap]` has listeners.
    #[serde(default)]
    pub imap: Option<SocketAddr>,
    /// An IMAP master user of this site's server (Dovecot `master = yes` passdb), and a
    /// file whose first line is its password (never logged). At the primary, levee uses
    /// it to copy there, before a failback, what clients changed in their mailboxes at the
    /// replica during the outage (messages saved with APPEND, such as sent mail; copies;
    /// folders created, renamed or deleted).
    #[serde(default)]
    pub master_user: Option<String>,
    #[serde(default)]
    pub master_password_file: Option<std::path::PathBuf>,
}

impl Backend {
    /// The upstream address that serves a listener of `kind`.
    pub fn smtp_for(&self, kind: ListenerKind) -> SocketAddr {
        match kind {
            ListenerKind::Relay => self.smtp,
            ListenerKind::Submission => self.submission.unwrap_or(self.smtp),
        }
    }
}

/// What a listener is for: it decides the upstream service and the behaviour when no
/// upstream can answer at envelope time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MX / relay (port 25): accepts mail for `local_domains` even when the upstream is down.
    Relay,
    /// Submission (port 587 / 465): needs the upstream to check credentials.
    Submission,
}

/// How a listener speaks TLS to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text; STARTTLS is not offered.
    None,
    /// Plain text with STARTTLS offered (needs `[tls]`).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465 style; needs `[tls]`).
    Implicit,
}

/// One SMTP listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    #[serde(default)]
    pub tls: TlsMode,
}

/// The SMTP front: listeners and the bounds of every session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Name in the greeting, EHLO reply and trace data.
    pub hostname: String,
    pub listen: Vec<Listener>,
    /// Domains accepted on relay listeners while no upstream can answer (store and forward).
    pub local_domains: Vec<String>,
    /// Largest message accepted, in bytes (announced as SIZE).
    pub max_message_size: u64,
    /// Longest command line, in bytes, CRLF included.
    pub max_line_length: usize,
    pub max_recipients: usize,
    /// Concurrent client sessions across all listeners; the next connection waits in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// Concurrent sessions from one client address (IPv6: one /64); past it a connection
    /// gets 421 at once. 0: no limit.
    pub max_connections_per_ip: usize,
    /// Protocol errors tolerated before the session is closed with 421.
    pub max_errors: u32,
    /// AUTH is offered only on TLS sessions unless this is true.
    pub allow_plaintext_auth: bool,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle upstream sessions kept per upstream for the next client (taken over with
    /// XCLIENT, so only for upstreams that offer it); 0 opens a new one per client.
    pub upstream_pool: usize,
    /// How long a pooled upstream session may stay idle before levee closes it.
    #[serde(with = "humantime_serde")]
    pub upstream_idle: Duration,
    /// How long sessions may finish their transaction after shutdown begins.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A message sent again within this time (same Message-ID, envelope and bytes: a
    /// client that lost the reply to its final dot) is answered 250 with the first
    /// record's id and neither journaled nor delivered again. 0 turns this off.
    #[serde(with = "humantime_serde")]
    pub resend_window: Duration,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            hostname: "levee.localdomain".into(),
            listen: Vec::new(),
            local_domains: Vec::new(),
            max_message_size: 50 * 1024 * 1024,
            max_line_length: 4096,
            max_recipients: 1000,
            max_connections: 2000,
            max_connections_per_ip: 100,
            max_errors: 10,
            allow_plaintext_auth: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            upstream_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            upstream_pool: 32,
            upstream_idle: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            // As long as an MTA keeps a message queued (Postfix: maximal_queue_lifetime).
            resend_window: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// PEM files for the client-facing TLS endpoint. The key is read at start and never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Store-and-forward: retries of journaled messages whose upstream delivery failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A message still undeliverable after this long is marked failed and reported.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Concurrent retry deliveries.
    pub workers: usize,
    /// When the connection to the primary's MTA broke after a message's final dot, the
    /// MTA may have queued it without saying so. levee then looks for that copy in the
    /// recipients' INBOX at the primary and sends its own only after the primary has
    /// answered this long without failing: set it above the time the MTA takes to retry
    /// a queued message (Postfix: `queue_run_delay` plus `minimal_backoff_time`, 10
    /// minutes by default) so that the message never arrives twice.
    #[serde(with = "humantime_serde")]
    pub unconfirmed_wait: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            max_age: Duration::from_secs(5 * 24 * 3600),
            workers: 4,
            unconfirmed_wait: Duration::from_secs(11 * 60),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port` to serve `/metrics` on; no endpoint when absent.
    pub listen: Option<SocketAddr>,
}

/// Logging defaults; `RUST_LOG` overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
        }
    }
}
