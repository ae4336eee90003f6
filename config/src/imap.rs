//! The IMAP front: listeners and the bounds of every session.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::TlsMode;

/// `[imap]`: absent or with no listeners, levee serves no IMAP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Imap {
    pub listen: Vec<ImapListener>,
    /// Longest command line a client may send (literals not counted), CRLF included.
    pub max_line_length: usize,
    /// Largest literal a client may send (an APPENDed message, say).
    pub max_literal: u32,
    /// LOGIN and AUTHENTICATE PLAIN are refused on connections without TLS unless this is
    /// true (the capability list then says LOGINDISABLED).
    pub allow_plaintext_auth: bool,
    /// A client that has not logged in after this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// A logged-in client silent for this long is disconnected (RFC 9051 asks for at
    /// least 30 minutes; IDLE clients re-issue IDLE before that).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session in IDLE this long with nothing else under way hibernates: levee closes
    /// its connection to the IMAP server and tells the client of new mail, flag changes
    /// and expunges itself, from the mailbox it follows anyway; the client's next command
    /// opens the session again. 0: never.
    #[serde(with = "humantime_serde")]
    pub hibernate_after: Duration,
    /// Connecting to the IMAP server and waiting for its greeting.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Concurrent client sessions; the next connection waits in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent sessions from one client address (IPv6: one /64); past it a connection
    /// gets BYE at once. 0: no limit. An office behind one NAT address needs room for
    /// every user's mail client (Outlook opens several connections each).
    pub max_connections_per_ip: usize,
}

impl Default for Imap {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            max_line_length: 64 * 1024,
            max_literal: 50 * 1024 * 1024,
            allow_plaintext_auth: false,
            login_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(31 * 60),
            hibernate_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 2000,
        }
    }
}

/// One IMAP listening socket (143-style with STARTTLS, or 993-style implicit TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapListener {
    pub addr: SocketAddr,
    #[serde(default)]
    pub tls: TlsMode,
}
