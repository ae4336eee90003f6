//! The mail transaction: MAIL, RCPT and DATA, and the rule that makes levee safe:
//! **the journal has the message durably before the client hears 250**.
//!
//! Envelope commands are forwarded to the upstream in lockstep, so the client hears the
//! mail server's own verdict (unknown user, relay denied). When the upstream is gone, a
//! relay listener accepts mail for its local domains only (never an open relay) and the
//! delivery worker forwards it later from the journal.

use std::time::{SystemTime, UNIX_EPOCH};

use levee_config::ListenerKind;
use levee_journal::{
    ClientInfo, DeliveryState, DeliveryStatus, JournalError, MessageRecord, NewRecord, RecordKind,
};
use mail_parser::MessageParser;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Body, ConnError, Connection};
use super::reply::{self, Reply};
use super::session::{Session, Transaction};
use crate::metrics as m;

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
        if self.listener.kind == ListenerKind::Submission && self.upstream.is_none() {
            return conn.reply(&reply::UPSTREAM_LOST);
        }
        if self.upstream.is_some() {
            match self.forward(line).await {
                Some(verdict) => {
                    if verdict.is_positive() {
                        self.open(from, true);
                    }
                    return conn.reply(&verdict);
                }
                None if self.listener.kind == ListenerKind::Submission => {
                    return conn.reply(&reply::UPSTREAM_LOST);
                }
                None => {}
            }
        }
        self.open(from, false);
        conn.reply(&reply::OK);
    }

    fn open(&mut self, from: &str, via_upstream: bool) {
        self.tx = Some(Transaction {
            mail_from: from.to_string(),
            rcpts: Vec::new(),
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
        let domain = to.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let local = self
            .shared
            .config
            .smtp
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        if local {
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

    /// Journals the message, then hands it to the upstream. Returns the client's reply.
    async fn accept(&mut self, body: Vec<u8>) -> Reply {
        let Some(tx) = self.tx.take() else {
            return reply::NEED_MAIL;
        };
        let size = body.len();
        let record = NewRecord {
            time_ms: now_ms(),
            kind: RecordKind::Message(MessageRecord {
                mail_from: tx.mail_from.clone(),
                rcpt_to: tx.rcpts.clone(),
                client: ClientInfo {
                    addr: Some(self.peer.to_string()),
                    helo: self.helo.clone(),
                    authenticated_user: self.auth_user.clone(),
                    listener: self.listener.name.clone(),
                    tls: self.tls,
                },
                message_id: message_id(&body),
                // The journal consumes its copy; ours goes upstream.
                body: body.clone(),
            }),
        };
        // The upstream receives DATA and the body while the journal commits; only the final
        // dot waits for durability, so the upstream never has a complete message that the
        // journal could still lose, and the fdatasync overlaps a round trip.
        let journal = self.shared.journal.clone();
        let upstream = self.upstream.as_mut().filter(|_| tx.via_upstream);
        let (appended, started) = tokio::join!(journal.append(record), async {
            match upstream {
                Some(upstream) => Some(upstream.begin_body(&body).await),
                None => None,
            }
        });
        let appended = match appended {
            Ok(appended) => appended,
            Err(err) => {
                tracing::error!(%err, "journal append failed; message refused");
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "journal").increment(1);
                if matches!(started, Some(Ok(None)) | Some(Err(_))) {
                    // The upstream holds a body without its final dot (closing the
                    // connection makes it discard the message), or the connection broke.
                    self.upstream = None;
                } else if matches!(started, Some(Ok(Some(_)))) {
                    // DATA was refused upstream: end its transaction before the next one.
                    let _ = self.forward(b"RSET\r\n").await;
                }
                return match err {
                    JournalError::Full => reply::STORAGE_FULL,
                    _ => reply::LOCAL_ERROR,
                };
            }
        };
        let seq = appended.seq;
        metrics::counter!(m::MESSAGES_ACCEPTED).increment(1);
        metrics::counter!(m::MESSAGE_BYTES).increment(size as u64);
        tracing::info!(seq, size, rcpts = tx.rcpts.len(), "message journaled");

        // In sync replication mode the 250 also waits (bounded) for the replica's ack; the
        // upstream's final dot goes out meanwhile.
        let replicator = self.shared.replicator.clone();
        let data_refused = matches!(started, Some(Ok(Some(_))));
        let upstream = self.upstream.as_mut();
        let (outcome, _) = tokio::join!(
            async {
                match (started, upstream) {
                    (Some(Ok(None)), Some(upstream)) => Some(upstream.end_body().await),
                    (Some(Ok(Some(refusal))), _) => Some(Ok(refusal)),
                    (Some(Err(err)), _) => Some(Err(err)),
                    _ => None,
                }
            },
            async {
                if let Some(replicator) = &replicator {
                    replicator.wait_durable(seq).await;
                }
            }
        );
        if data_refused {
            // DATA itself was refused: end the upstream transaction before the next one.
            let _ = self.forward(b"RSET\r\n").await;
        }
        match outcome {
            Some(Ok(verdict)) if verdict.is_positive() => {
                self.record_state(seq, DeliveryStatus::Delivered, &verdict);
                metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
                Reply::owned(250, [2, 0, 0], format!("Ok: queued as L{seq}"))
            }
            Some(Ok(verdict)) if verdict.code() >= 500 => {
                // The client hears the refusal itself, so nothing was acknowledged.
                self.record_state(seq, DeliveryStatus::Rejected, &verdict);
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "upstream").increment(1);
                verdict
            }
            Some(Ok(verdict)) => self.defer(seq, &verdict.summary()),
            Some(Err(err)) => {
                tracing::warn!(%err, seq, "upstream failed at end of data");
                self.upstream = None;
                self.defer(seq, &err.to_string())
            }
            None => self.defer(seq, "mail server unreachable at envelope time"),
        }
    }

    /// Keeps the message for the delivery worker and acknowledges it: it is durable.
    fn defer(&self, seq: u64, why: &str) -> Reply {
        let state = DeliveryState {
            status: DeliveryStatus::Deferred,
            attempts: 0,
            next_attempt_ms: now_ms(),
            last_reply: Some(why.to_string()),
            updated_ms: now_ms(),
        };
        if let Err(err) = self.shared.journal.set_state(seq, &state) {
            tracing::error!(%err, seq, "cannot record deferral; delivered at next start");
        }
        metrics::counter!(m::MESSAGES_DEFERRED).increment(1);
        self.shared.delivery.notify_one();
        tracing::info!(seq, why, "delivery deferred; will retry from the journal");
        Reply::owned(
            250,
            [2, 0, 0],
            format!("Ok: queued as L{seq} (stored; mail server delivery deferred)"),
        )
    }

    fn record_state(&self, seq: u64, status: DeliveryStatus, verdict: &Reply) {
        let state = DeliveryState {
            status,
            attempts: 1,
            next_attempt_ms: 0,
            last_reply: Some(verdict.summary()),
            updated_ms: now_ms(),
        };
        if let Err(err) = self.shared.journal.set_state(seq, &state) {
            tracing::error!(%err, seq, "cannot record delivery state");
        }
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
