//! The mail transaction: MAIL, RCPT and DATA, and the rule that makes levee safe:
//! **the journal has the message durably before the client hears 250**.
//!
//! Envelope commands are forwarded to the upstream in lockstep, so the client hears the
//! mail server's own verdict (unknown user, relay denied). When the upstream is gone, a
//! relay listener accepts mail for its local domains only (never an open relay) and the
//! delivery worker forwards it later from the journal. What happens after DATA (journal,
//! then the upstream) is in [`super::handoff`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_config::ListenerKind;
use mail_parser::MessageParser;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Body, ConnError, Connection};
use super::envelope;
use super::reply::{self, Reply};
use super::session::Session;
use crate::metrics as m;
use crate::trace;

/// An open mail transaction (after a successful MAIL FROM).
#[derive(Debug)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The MAIL line as the upstream got it (declared size grown by the trace header),
    /// and each accepted recipient's RCPT line: the envelope can be replayed with fewer
    /// recipients.
    pub mail_line: Vec<u8>,
    pub rcpt_lines: Vec<Vec<u8>>,
    /// The upstream took part in this transaction from its MAIL FROM on.
    pub via_upstream: bool,
}

impl Session {
    pub(super) async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        line: &[u8],
        from: &str,
    ) {
        if self.helo.is_none() {
            return conn.reply(&reply::NEED_HELO);
        }
        if self.tx.is_some() {
            return conn.reply(&reply::NESTED_MAIL);
        }
        // An admin's switch under way holds the new transaction rather than refusing it:
        // the client waits a moment (the switch ends within `[admin] drain_timeout`) and
        // its message goes to the site switched to.
        if self.shared.routes.draining()
            && !self.shared.routes.wait_drained(self.switch_wait()).await
        {
            return conn.reply(&reply::SWITCHING);
        }
        self.follow_active().await;
        if self.listener.kind == ListenerKind::Submission && self.upstream.is_none() {
            return conn.reply(&reply::UPSTREAM_LOST);
        }
        let hostname = &self.shared.config.smtp.hostname;
        let extra = trace::smtp_received_bound(hostname, &self.client_info());
        let line = envelope::grow_declared_size(line, extra);
        if self.upstream.is_some() {
            match self.forward(&line).await {
                Some(verdict) => {
                    if verdict.is_positive() {
                        self.open(from, line, true);
                    }
                    return conn.reply(&verdict);
                }
                None if self.listener.kind == ListenerKind::Submission => {
                    return conn.reply(&reply::UPSTREAM_LOST);
                }
                None => {}
            }
        }
        self.open(from, line, false);
        conn.reply(&reply::OK);
    }

    /// How long MAIL FROM waits for a switch to end: the drain's own limit and a margin,
    /// well inside the 5 minutes a client gives a MAIL command (RFC 5321, 4.5.3.2.2).
    fn switch_wait(&self) -> Duration {
        let drain = (self.shared.config.admin.as_ref())
            .map_or(Duration::from_secs(30), |a| a.drain_timeout);
        (drain + Duration::from_secs(5)).min(Duration::from_secs(240))
    }

    fn open(&mut self, from: &str, mail_line: Vec<u8>, via_upstream: bool) {
        self.tx = Some(Transaction {
            mail_from: from.to_string(),
            rcpts: Vec::new(),
            mail_line,
            rcpt_lines: Vec::new(),
            via_upstream,
        });
    }

    pub(super) async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        line: &[u8],
        to: &str,
    ) {
        let Some(tx) = &self.tx else {
            return conn.reply(&reply::NEED_MAIL);
        };
        if tx.rcpts.len() >= self.shared.config.smtp.max_recipients {
            return conn.reply(&reply::TOO_MANY_RCPTS);
        }
        let verdict = if tx.via_upstream {
            match self.forward(line).await {
                Some(verdict) => verdict,
                None => self.store_only_verdict(to),
            }
        } else {
            self.store_only_verdict(to)
        };
        if verdict.is_positive()
            && let Some(tx) = &mut self.tx
        {
            tx.rcpts.push(to.to_string());
            tx.rcpt_lines.push(line.to_vec());
        }
        conn.reply(&verdict);
    }

    /// The verdict on a recipient when no upstream can judge it.
    fn store_only_verdict(&mut self, to: &str) -> Reply {
        if let Some(tx) = &mut self.tx {
            tx.via_upstream = false;
        }
        if self.listener.kind == ListenerKind::Submission {
            return reply::UPSTREAM_LOST;
        }
        if envelope::is_local(&self.shared.config.smtp.local_domains, to) {
            Reply::own(250, [2, 1, 5], "Ok (mail server unreachable; will forward)")
        } else {
            reply::RELAY_DENIED
        }
    }

    pub(super) async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Result<(), ConnError> {
        let Some(tx) = &self.tx else {
            conn.reply(&reply::NEED_MAIL);
            return Ok(());
        };
        if tx.rcpts.is_empty() {
            conn.reply(&reply::NEED_RCPT);
            return Ok(());
        }
        conn.reply(&reply::START_DATA);
        let limits = &self.shared.config.smtp;
        let body = match conn
            .read_body(limits.max_message_size, limits.data_timeout)
            .await?
        {
            Body::Complete(body) => body,
            Body::TooBig => {
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "size").increment(1);
                self.reset_transaction().await;
                conn.reply(&reply::TOO_BIG);
                return Ok(());
            }
        };
        let verdict = self.accept(body).await;
        conn.reply(&verdict);
        Ok(())
    }
}

/// The Message-ID header, for the journal index (angle brackets stripped by the parser).
pub fn message_id(body: &[u8]) -> Option<String> {
    MessageParser::new()
        .parse_headers(body)
        .and_then(|message| message.message_id().map(str::to_string))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
