//! After DATA: the message goes into the journal, then to the upstream with levee's trace
//! header above the client's bytes, and the client hears the outcome.
//!
//! The upstream's side of the transaction (DATA, or at the replica first the envelope
//! replayed for the recipients its MTA may have) runs while the journal commits; the body
//! and the final dot go out only once the record is durable, because the trace header
//! names the record (its seq and chain link) and the upstream must never hold a complete
//! message the journal could still lose. Once the journal has the message every failure
//! of the upstream is a deferral (250 to the client, the delivery worker retries), never a
//! loss.

use levee_journal::{
    DeliveryState, DeliveryStatus, JournalError, MessageRecord, NewRecord, RecordKind, Seq,
};

use super::reply::{self, Reply};
use super::resend;
use super::route::{self, BY_APPLIER};
use super::session::Session;
use super::transaction::{Transaction, message_id, now_ms};
use super::upstream::{Upstream, UpstreamError};
use crate::delivery;
use crate::failover::controller::Backend;
use crate::metrics as m;
use crate::trace;

/// Which recipients the upstream's copy is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handoff {
    /// No upstream took part in the envelope: the delivery worker sends it.
    Store,
    /// Every recipient, on the envelope the upstream already has.
    All,
    /// Only the recipients at these indexes (the others are local at the replica, where
    /// the applier delivers them): the envelope is replayed with them alone.
    Only(Vec<usize>),
    /// Nobody: the applier delivers every recipient.
    Nobody,
}

/// Where the upstream stands when the journal has committed.
#[derive(Debug)]
enum Ready {
    /// DATA was answered 354: the upstream waits for the body.
    Body,
    /// The upstream refused the replayed envelope or DATA; its transaction needs a RSET.
    Refused(Reply),
    /// Nothing is to be sent (its transaction was reset).
    Skipped,
}

impl Session {
    /// Journals the message, then hands it to the upstream. Returns the client's reply.
    pub(super) async fn accept(&mut self, body: Vec<u8>) -> Reply {
        let Some(tx) = self.tx.take() else {
            return reply::NEED_MAIL;
        };
        let message_id = message_id(&body);
        let sent = resend::Sent {
            message_id: message_id.as_deref(),
            mail_from: &tx.mail_from,
            rcpts: &tx.rcpts,
            body: &body,
        };
        let window = self.shared.config.smtp.resend_window;
        if let Some(seq) = resend::earlier_copy(&self.shared.journal, window, &sent, now_ms()) {
            self.reset_upstream().await;
            metrics::counter!(m::MESSAGES_RESENT).increment(1);
            tracing::info!(
                seq,
                "the same message again (its client lost the reply): answered with its record, not journaled again"
            );
            return Reply::owned(
                250,
                [2, 0, 0],
                format!("Ok: queued as L{seq} (already received)"),
            );
        }
        let size = body.len();
        let client = self.client_info();
        let plan = self.plan(&tx);
        let record = NewRecord {
            time_ms: now_ms(),
            kind: RecordKind::Message(MessageRecord {
                mail_from: tx.mail_from.clone(),
                rcpt_to: tx.rcpts.clone(),
                client: client.clone(),
                message_id,
                // The journal consumes its copy; ours goes upstream.
                body: body.clone(),
            }),
        };
        let accepted_ms = record.time_ms;
        let journal = self.shared.journal.clone();
        let upstream = self.upstream.as_mut().filter(|_| plan != Handoff::Store);
        let (appended, ready) = tokio::join!(journal.append(record), async {
            match upstream {
                Some(upstream) => Some(prepare(upstream, &tx, &plan).await),
                None => None,
            }
        });
        let appended = match appended {
            Ok(appended) => appended,
            Err(err) => {
                tracing::error!(%err, "journal append failed; message refused");
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "journal").increment(1);
                match ready {
                    // Closing the connection makes the upstream discard what it holds.
                    Some(Ok(Ready::Body)) => self.upstream = None,
                    Some(Err(lost)) => {
                        route::note_failure(&self.shared, self.backend, &lost);
                        self.upstream = None;
                    }
                    Some(Ok(Ready::Refused(_))) => self.reset_upstream().await,
                    Some(Ok(Ready::Skipped)) | None => {}
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

        let id = trace::trace_id(seq, &appended.chain);
        let header =
            trace::smtp_received(&self.shared.config.smtp.hostname, &client, &id, accepted_ms);
        // In sync replication mode the 250 also waits (bounded) for the replica's ack; the
        // upstream's copy goes out meanwhile.
        let replicator = self.shared.replicator.clone();
        let upstream = self.upstream.as_mut();
        let (outcome, _) = tokio::join!(
            async {
                match (ready, upstream) {
                    (Some(Ok(Ready::Body)), Some(upstream)) => {
                        Some(upstream.finish_data(header.as_bytes(), &body).await)
                    }
                    (Some(Ok(Ready::Refused(refusal))), _) => Some(Ok(refusal)),
                    (Some(Ok(Ready::Skipped)), _) => None,
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
        self.conclude(seq, &plan, outcome).await
    }

    /// The client's reply and the record's delivery state for the upstream's outcome.
    async fn conclude(
        &mut self,
        seq: Seq,
        plan: &Handoff,
        outcome: Option<Result<Reply, UpstreamError>>,
    ) -> Reply {
        let split = matches!(plan, Handoff::Only(_));
        let queued = || Reply::owned(250, [2, 0, 0], format!("Ok: queued as L{seq}"));
        match outcome {
            None if *plan == Handoff::Nobody => {
                self.record_state(seq, DeliveryStatus::Delivered, 0, BY_APPLIER.into());
                metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
                queued()
            }
            None => self.defer(seq, "mail server unreachable at envelope time"),
            Some(Ok(verdict)) if verdict.is_positive() => {
                let mut state = verdict.summary();
                if split {
                    state = format!("{state}; {BY_APPLIER}");
                }
                self.record_state(seq, DeliveryStatus::Delivered, 1, state);
                metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
                queued()
            }
            Some(Ok(verdict)) if verdict.code() >= 500 => {
                self.reset_upstream().await;
                metrics::counter!(m::MESSAGES_REFUSED, "reason" => "upstream").increment(1);
                if !split {
                    // The client hears the refusal itself, so nothing was acknowledged.
                    self.record_state(seq, DeliveryStatus::Rejected, 1, verdict.summary());
                    return verdict;
                }
                // The local recipients have the message (the applier delivers it); only
                // the others were refused.
                // TODO(DSN): a bounce to the sender for the refused recipients.
                tracing::error!(seq, reply = %verdict, "non-local recipients refused");
                let state = format!(
                    "non-local recipients refused: {}; {BY_APPLIER}",
                    verdict.summary()
                );
                self.record_state(seq, DeliveryStatus::Failed, 1, state);
                queued()
            }
            Some(Ok(verdict)) => {
                self.reset_upstream().await;
                self.defer(seq, &verdict.summary())
            }
            Some(Err(err)) => {
                tracing::warn!(%err, seq, "upstream failed at end of data");
                route::note_failure(&self.shared, self.backend, &err);
                let unconfirmed = self.backend == Backend::Primary
                    && (self.upstream.as_ref()).is_some_and(Upstream::lost_after_final_dot);
                if unconfirmed {
                    // Before the deferral, so that no retry goes out without the wait.
                    delivery::unconfirmed::mark(&self.shared.journal, seq);
                }
                self.upstream = None;
                self.defer(seq, &err.to_string())
            }
        }
    }

    /// Which recipients this transaction's upstream may deliver.
    fn plan(&self, tx: &Transaction) -> Handoff {
        if !tx.via_upstream || self.upstream.is_none() {
            return Handoff::Store;
        }
        let routes = &self.shared.routes;
        let others: Vec<usize> = (0..tx.rcpts.len())
            .filter(|&i| !routes.left_to_applier(self.backend, &tx.rcpts[i]))
            .collect();
        match others.len() {
            0 => Handoff::Nobody,
            n if n == tx.rcpts.len() => Handoff::All,
            _ => Handoff::Only(others),
        }
    }

    /// Ends a refused or unfinished upstream transaction before the next one. A reply that
    /// is no reply (after a 4xx to the final dot) changes nothing.
    async fn reset_upstream(&mut self) {
        if self.upstream.is_some() {
            let _ = self.forward(b"RSET\r\n").await;
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
        if let Err(err) = crate::resync::set_state(&self.shared.journal, seq, &state) {
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

    fn record_state(&self, seq: u64, status: DeliveryStatus, attempts: u32, why: String) {
        let state = DeliveryState {
            status,
            attempts,
            next_attempt_ms: 0,
            last_reply: Some(why),
            updated_ms: now_ms(),
        };
        if let Err(err) = crate::resync::set_state(&self.shared.journal, seq, &state) {
            tracing::error!(%err, seq, "cannot record delivery state");
        }
    }
}

/// The upstream's side while the journal commits: DATA, after resetting and replaying the
/// envelope when only some recipients are the upstream's.
async fn prepare(
    upstream: &mut Upstream,
    tx: &Transaction,
    plan: &Handoff,
) -> Result<Ready, UpstreamError> {
    let only = match plan {
        Handoff::Store => return Ok(Ready::Skipped),
        Handoff::All => return begin_data(upstream).await,
        Handoff::Nobody => {
            upstream.command(b"RSET\r\n").await?;
            return Ok(Ready::Skipped);
        }
        Handoff::Only(only) => only,
    };
    upstream.command(b"RSET\r\n").await?;
    let verdict = upstream.command(&tx.mail_line).await?;
    if !verdict.is_positive() {
        return Ok(Ready::Refused(verdict));
    }
    let (mut accepted, mut refusal) = (0, None);
    for &i in only {
        let verdict = upstream.command(&tx.rcpt_lines[i]).await?;
        if verdict.is_positive() {
            accepted += 1;
        } else if verdict.code() < 500 {
            // Retrying the whole message later reaches everyone; part of it now would not.
            return Ok(Ready::Refused(verdict));
        } else {
            tracing::warn!(rcpt = %tx.rcpts[i], reply = %verdict, "recipient refused on replay");
            refusal = Some(verdict);
        }
    }
    match refusal {
        Some(refusal) if accepted == 0 => Ok(Ready::Refused(refusal)),
        _ => begin_data(upstream).await,
    }
}

async fn begin_data(upstream: &mut Upstream) -> Result<Ready, UpstreamError> {
    Ok(match upstream.begin_data().await? {
        None => Ready::Body,
        Some(refusal) => Ready::Refused(refusal),
    })
}
