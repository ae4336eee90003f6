//! The applier's connection to the standby mail server, kept open across records.
//!
//! Catching up after a backlog is thousands of transactions in a row; one LMTP (or SMTP)
//! session carries them all instead of a connect and LHLO each. A transaction that ended
//! early (a refusal before the final dot) is reset with RSET before the next one; any error
//! drops the connection and the next transaction opens a new one. A connection idle for
//! [`IDLE`] is closed, and so is the one open at shutdown.
//!
//! Whether a failed transaction may have delivered matters to the caller: only a failure
//! after the final dot was written can have (the standby discards a message whose data did
//! not end), and [`LinkError::after_dot`] says so.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::smtp::reply::Reply;
use crate::smtp::upstream::{ClientIdentity, Upstream, UpstreamError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// An open connection unused this long is closed.
pub const IDLE: Duration = Duration::from_secs(5);

/// Where the standby takes mail.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Lmtp(SocketAddr),
    Smtp(SocketAddr),
}

impl Target {
    /// The protocol, as a Received header's `with` clause names it.
    pub fn protocol(&self) -> &'static str {
        match self {
            Target::Lmtp(_) => "LMTP",
            Target::Smtp(_) => "ESMTP",
        }
    }
}

/// What became of one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Refused for good (5xx), with the reply.
    Refused(String),
    /// Not delivered this time (4xx, or the transaction stopped before its data).
    Deferred(String),
}

/// The transaction failed on the connection, not by a reply.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct LinkError {
    /// The final dot had been written: the standby may have delivered.
    pub after_dot: bool,
    #[source]
    pub source: UpstreamError,
}

#[derive(Debug)]
struct Open {
    upstream: Upstream,
    /// A transaction was left open (refused before its data): RSET before the next.
    dirty: bool,
    last_used: Instant,
}

/// The applier's (lazily opened) connection to the standby.
#[derive(Debug)]
pub struct StandbyLink {
    target: Target,
    hostname: String,
    open: Option<Open>,
}

impl StandbyLink {
    pub fn new(target: Target, hostname: &str) -> StandbyLink {
        StandbyLink {
            target,
            hostname: hostname.to_string(),
            open: None,
        }
    }

    /// The protocol spoken to the standby, for the trace header.
    pub fn protocol(&self) -> &'static str {
        self.target.protocol()
    }

    /// When the open connection becomes idle (`None` when there is none).
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|open| open.last_used + IDLE)
    }

    /// Closes the connection politely (QUIT, bounded), if one is open.
    pub async fn close(&mut self) {
        if let Some(open) = self.open.take() {
            open.upstream.quit().await;
        }
    }

    /// One transaction: `mail_from`, `rcpts`, `body` (the trace header included). Returns a
    /// verdict per recipient, in order.
    pub async fn transfer(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<Vec<(String, Verdict)>, LinkError> {
        self.run(mail_from, rcpts, Some(body)).await
    }

    /// MAIL and RCPT only, then the transaction is dropped (RSET): which recipients the
    /// standby would take now. [`Verdict::Delivered`] here means "accepted at RCPT"; a
    /// recipient refused for good cannot hold a copy, so it needs no duplicate check (and
    /// its mailbox may not exist to look into).
    pub async fn probe(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
    ) -> Result<Vec<(String, Verdict)>, LinkError> {
        self.run(mail_from, rcpts, None).await
    }

    async fn run(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body: Option<&[u8]>,
    ) -> Result<Vec<(String, Verdict)>, LinkError> {
        if self.open.is_some() {
            match self.attempt(mail_from, rcpts, body).await {
                // The reused connection died before it took anything of this transaction
                // (closed while idle, say): nothing was delivered, so a fresh one may try.
                Err(Failure { started: false, .. }) => {}
                other => return other.map_err(Failure::into_error),
            }
        }
        self.attempt(mail_from, rcpts, body)
            .await
            .map_err(Failure::into_error)
    }

    async fn attempt(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body: Option<&[u8]>,
    ) -> Result<Vec<(String, Verdict)>, Failure> {
        let mut open = match self.open.take() {
            Some(open) => open,
            None => Open {
                upstream: self.connect().await.map_err(Failure::before)?,
                dirty: false,
                last_used: Instant::now(),
            },
        };
        let result = transaction(&mut open, self.target, mail_from, rcpts, body).await;
        // Any error leaves the session in an unknown state: it is dropped, never reused.
        if result.is_ok() {
            open.last_used = Instant::now();
            self.open = Some(open);
        }
        result
    }

    async fn connect(&self) -> Result<Upstream, UpstreamError> {
        match self.target {
            Target::Lmtp(addr) => {
                Upstream::connect_lmtp(addr, CONNECT_TIMEOUT, REPLY_TIMEOUT, &self.hostname).await
            }
            Target::Smtp(addr) => {
                Upstream::open(
                    addr,
                    CONNECT_TIMEOUT,
                    REPLY_TIMEOUT,
                    &self.hostname,
                    &ClientIdentity::default(),
                )
                .await
            }
        }
    }
}

/// A failed attempt, and whether anything of it had reached the standby.
#[derive(Debug)]
struct Failure {
    /// The standby answered at least one command of this transaction.
    started: bool,
    after_dot: bool,
    source: UpstreamError,
}

impl Failure {
    fn before(source: UpstreamError) -> Failure {
        Failure {
            started: false,
            after_dot: false,
            source,
        }
    }

    fn into_error(self) -> LinkError {
        LinkError {
            after_dot: self.after_dot,
            source: self.source,
        }
    }
}

/// Every recipient gets the same verdict from one reply.
fn all(rcpts: &[&str], reply: &Reply) -> Vec<(String, Verdict)> {
    rcpts
        .iter()
        .map(|r| (r.to_string(), verdict(reply)))
        .collect()
}

fn verdict(reply: &Reply) -> Verdict {
    match reply.code() {
        200..=299 => Verdict::Delivered,
        500.. => Verdict::Refused(reply.summary()),
        _ => Verdict::Deferred(reply.summary()),
    }
}

/// MAIL, RCPT, and with a `body` DATA and the final dot; without one (a probe), the
/// transaction is left open for the RSET before the next.
async fn transaction(
    open: &mut Open,
    target: Target,
    mail_from: &str,
    rcpts: &[&str],
    body: Option<&[u8]>,
) -> Result<Vec<(String, Verdict)>, Failure> {
    let mut started = false;
    let fail = |started: bool, after_dot: bool| {
        move |source| Failure {
            started,
            after_dot,
            source,
        }
    };
    let standby = &mut open.upstream;
    if open.dirty {
        let reply = standby
            .command(b"RSET\r\n")
            .await
            .map_err(fail(started, false))?;
        if !reply.is_positive() {
            return Err(fail(false, false)(UpstreamError::Refused {
                addr: standby.addr(),
                reply,
            }));
        }
        open.dirty = false;
        started = true;
    }
    // From here on, returning early leaves a transaction open.
    open.dirty = true;
    let mail = format!("MAIL FROM:<{mail_from}>\r\n");
    let reply = standby
        .command(mail.as_bytes())
        .await
        .map_err(fail(started, false))?;
    if !reply.is_positive() {
        return Ok(all(rcpts, &reply));
    }
    let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(rcpts.len());
    let mut accepted: Vec<&str> = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        let reply = standby
            .command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await
            .map_err(fail(true, false))?;
        match verdict(&reply) {
            Verdict::Delivered => accepted.push(rcpt),
            // A temporary refusal holds the whole record back: nobody gets it now, so
            // that a retry has only this transaction to redo.
            Verdict::Deferred(_) => return Ok(all(rcpts, &reply)),
            refused => verdicts.push((rcpt.to_string(), refused)),
        }
    }
    let Some(body) = body.filter(|_| !accepted.is_empty()) else {
        verdicts.extend(accepted.iter().map(|r| (r.to_string(), Verdict::Delivered)));
        return Ok(verdicts);
    };
    if let Some(refusal) = standby.begin_body(body).await.map_err(fail(true, false))? {
        verdicts.extend(all(&accepted, &refusal));
        return Ok(verdicts);
    }
    let replies = match target {
        Target::Lmtp(_) => standby.end_body_lmtp(accepted.len()).await,
        Target::Smtp(_) => standby.end_body().await.map(|reply| vec![reply]),
    }
    .map_err(fail(true, true))?;
    open.dirty = false;
    if replies.len() == accepted.len() {
        verdicts.extend(
            accepted
                .iter()
                .zip(&replies)
                .map(|(r, v)| (r.to_string(), verdict(v))),
        );
    } else {
        verdicts.extend(all(&accepted, &replies[0]));
    }
    Ok(verdicts)
}
