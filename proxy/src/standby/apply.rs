//! The applier: delivers every replicated message to the standby mail server, in journal
//! order, so that the replica site's mailboxes are warm when a failover comes.
//!
//! Only recipients in `apply.local_domains` are delivered: outbound mail was already
//! relayed by the primary and must not leave a second time. The applier's progress is the
//! delivery state of each record in the replica's own journal, made durable at least every
//! [`APPLY_GROUP`] records (one fdatasync for the group, not one per message), so a restart
//! resumes where it stopped. A record the
//! standby refuses permanently is parked (state `Failed`, a metric, an error log), never
//! dropped silently; a temporary failure stops the applier at that record until it passes,
//! which keeps the order.
//!
//! Each copy carries a trace header naming its record ([`dedupe::trace_id`]). The records
//! whose outcome the applier may not know (the first [`APPLY_GROUP`] it tries after a
//! start, or one whose attempt failed after its final dot) are checked for at the standby
//! first when `[apply]` has the
//! IMAP keys ([`dedupe`]); without them, applying is at-least-once. What the applier does
//! know in memory (recipients that already have a record, or refused it) is never asked
//! again.

use std::collections::BTreeMap;

use levee_config::Apply;
use levee_journal::{
    DeliveryState, DeliveryStatus, Journal, JournalError, MessageRecord, Record, RecordKind, Seq,
};
use levee_replica::metrics as rm;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dedupe::{self, Dedupe, SETTLE};
use super::link::{StandbyLink, Target, Verdict};
use super::mailbox;
use crate::smtp::now_ms;

/// Records applied between two fdatasyncs of their states. After a crash at most this many
/// records can be at the standby without their state saying so, and each of the first this
/// many pending records is looked for at the standby before it is delivered again.
pub const APPLY_GROUP: usize = 16;

/// What one pass over the pending records came to.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Applied (or parked) at least one record; there may be more.
    Applied,
    /// Nothing pending.
    Idle,
    /// The next record must wait until then (a retry, or the settle time of its check).
    Blocked(Instant),
}

/// What one attempt at a record came to.
enum Step {
    /// Its final state, and a note for it.
    Finished(DeliveryStatus, String),
    /// Try the same record again later.
    Retry(String),
    /// Not attempted: its duplicate check may only run then.
    NotBefore(Instant),
}

/// What the applier knows of the record it is working on.
#[derive(Debug)]
struct Current {
    seq: Seq,
    /// Recipients whose outcome is known: delivered (or found at the standby), or refused.
    settled: BTreeMap<String, Verdict>,
    /// Since when the standby may hold a copy nobody recorded.
    unsure_since: Option<Instant>,
    not_before: Option<Instant>,
}

#[derive(Debug)]
struct Applier {
    journal: Journal,
    apply: Apply,
    link: StandbyLink,
    dedupe: Option<Dedupe>,
    current: Option<Current>,
    /// Since the start, and how many more records tried from now on may be ones the
    /// previous run delivered without making their state durable.
    unsure_from_start: Option<(Instant, usize)>,
    /// Final states written since the last fdatasync (retried if a flush failed).
    unflushed: usize,
    /// The last record given a final state.
    last_final: Option<Seq>,
}

/// Runs until `shutdown`.
pub async fn run(
    journal: Journal,
    apply: Apply,
    dedupe: Option<Dedupe>,
    shutdown: CancellationToken,
) {
    let target = match (apply.lmtp, apply.smtp) {
        (Some(addr), _) => Target::Lmtp(addr),
        (None, Some(addr)) => Target::Smtp(addr),
        (None, None) => {
            tracing::error!("apply: no standby configured (lmtp or smtp); nothing is applied");
            return;
        }
    };
    if dedupe.is_none() {
        tracing::warn!(
            "apply: no duplicate check ([apply] imap, master_user, master_password_file): a \
             message the standby took just before levee replica died is delivered again \
             after the restart (at-least-once)"
        );
    }
    let mut head = journal.watch_head();
    let mut applier = Applier {
        link: StandbyLink::new(target, &apply.hostname),
        journal,
        apply,
        dedupe,
        current: None,
        unsure_from_start: Some((Instant::now(), APPLY_GROUP)),
        unflushed: 0,
        last_final: None,
    };
    loop {
        let pass = match applier.apply_pending(&shutdown).await {
            Ok(pass) => pass,
            Err(err) => {
                tracing::error!(%err, "applier cannot use the journal");
                Pass::Blocked(Instant::now() + applier.apply.retry)
            }
        };
        let wake = match pass {
            Pass::Applied if !shutdown.is_cancelled() => continue,
            Pass::Applied => break,
            // Idle: also look again now and then (a record may have been reset by hand).
            Pass::Idle => Instant::now() + applier.apply.retry,
            Pass::Blocked(at) => at,
        };
        let idle = applier.link.idle_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = head.changed(), if pass == Pass::Idle => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = tokio::time::sleep_until(idle.unwrap_or(wake)), if idle.is_some_and(|at| at < wake) => {
                applier.link.close().await;
            }
        }
    }
    applier.link.close().await;
}

impl Applier {
    /// Applies pending records in order, stopping at the first that must wait, and makes
    /// their states durable before it returns.
    async fn apply_pending(&mut self, shutdown: &CancellationToken) -> Result<Pass, JournalError> {
        let pass = self.apply_some(shutdown).await;
        self.flush_progress().await?;
        pass
    }

    /// One fdatasync for every final state written since the last.
    async fn flush_progress(&mut self) -> Result<(), JournalError> {
        if self.unflushed == 0 {
            return Ok(());
        }
        self.journal.flush().await?;
        self.unflushed = 0;
        if let Some(seq) = self.last_final {
            metrics::gauge!(rm::APPLIED_SEQ).set(seq as f64);
        }
        Ok(())
    }

    async fn apply_some(&mut self, shutdown: &CancellationToken) -> Result<Pass, JournalError> {
        // A flush that failed last time comes before anything else.
        self.flush_progress().await?;
        let mut pass = Pass::Idle;
        for (seq, state) in self.journal.undelivered(256)? {
            if shutdown.is_cancelled() {
                break;
            }
            let Some(record) = self.journal.get(seq)? else {
                continue;
            };
            let message = match &record.kind {
                RecordKind::Message(message) => message,
                RecordKind::Mailbox(change) => {
                    if let Some(at) = self.current(seq).not_before
                        && Instant::now() < at
                    {
                        return Ok(Pass::Blocked(at));
                    }
                    let unsure = state.attempts > 0 || self.unsure_from_start.is_some();
                    let step = match mailbox::apply(self.dedupe.as_ref(), change, unsure).await {
                        mailbox::Outcome::Done(note) => {
                            Step::Finished(DeliveryStatus::Delivered, note)
                        }
                        mailbox::Outcome::Failed(note) => {
                            Step::Finished(DeliveryStatus::Failed, note)
                        }
                        mailbox::Outcome::Retry(note) => Step::Retry(note),
                    };
                    if matches!(step, Step::Finished(DeliveryStatus::Delivered, _)) {
                        metrics::counter!(rm::MAILBOX_CHANGES, "change" => change.change.name())
                            .increment(1);
                    }
                    if let Some(pass) = self.settle(seq, &state, step).await? {
                        return Ok(pass);
                    }
                    pass = Pass::Applied;
                    continue;
                }
                // Made at the replica already: nothing for its applier.
                RecordKind::Audit(_) | RecordKind::MailboxAtReplica(_) => continue,
            };
            let local: Vec<&str> = message
                .rcpt_to
                .iter()
                .map(String::as_str)
                .filter(|r| is_local(&self.apply, r))
                .collect();
            let step = if local.is_empty() {
                Step::Finished(
                    DeliveryStatus::Delivered,
                    "no local recipients at the replica".into(),
                )
            } else {
                if let Some(at) = self.current(seq).not_before
                    && Instant::now() < at
                {
                    return Ok(Pass::Blocked(at));
                }
                self.attempt(&record, message, &local).await
            };
            if let Some(pass) = self.settle(seq, &state, step).await? {
                return Ok(pass);
            }
            pass = Pass::Applied;
        }
        Ok(pass)
    }

    /// Records what one attempt at record `seq` came to; `Some` when the pass must stop.
    async fn settle(
        &mut self,
        seq: Seq,
        state: &DeliveryState,
        step: Step,
    ) -> Result<Option<Pass>, JournalError> {
        let (status, note) = match step {
            Step::Finished(status, note) => (status, note),
            Step::NotBefore(at) => return Ok(Some(Pass::Blocked(at))),
            Step::Retry(note) => {
                tracing::warn!(seq, %note, "standby delivery failed; will retry this record");
                let retry_at = Instant::now() + self.apply.retry;
                let checked = self.dedupe.is_some();
                let current = self.current(seq);
                let at = match current.unsure_since {
                    Some(since) if checked => retry_at.max(since + SETTLE),
                    _ => retry_at,
                };
                current.not_before = Some(at);
                let retry = DeliveryState {
                    status: DeliveryStatus::Pending,
                    attempts: state.attempts + 1,
                    next_attempt_ms: now_ms() + self.apply.retry.as_millis() as u64,
                    last_reply: Some(note),
                    updated_ms: now_ms(),
                };
                self.journal.set_state(seq, &retry)?;
                return Ok(Some(Pass::Blocked(at)));
            }
        };
        if status == DeliveryStatus::Failed {
            metrics::counter!(rm::APPLY_PARKED).increment(1);
            tracing::error!(seq, %note, "standby refused the message permanently; parked");
        }
        self.journal.set_state(
            seq,
            &DeliveryState {
                status,
                attempts: state.attempts + 1,
                next_attempt_ms: 0,
                last_reply: Some(note),
                updated_ms: now_ms(),
            },
        )?;
        // Only now: had the state not been written, the next pass must still know who
        // has the record.
        self.current = None;
        self.last_final = Some(seq);
        self.unflushed += 1;
        // Durable every APPLY_GROUP records: a restart then checks at most that many
        // records at the standby before applying them again.
        if self.unflushed >= APPLY_GROUP {
            self.flush_progress().await?;
        }
        Ok(None)
    }

    /// The in-memory state of record `seq`, started afresh for a new record.
    fn current(&mut self, seq: Seq) -> &mut Current {
        if self.current.as_ref().is_none_or(|c| c.seq != seq) {
            self.current = Some(Current {
                seq,
                settled: BTreeMap::new(),
                unsure_since: self.unsure_after_start(),
                not_before: None,
            });
        }
        self.current.as_mut().expect("just set")
    }

    /// Whether the next record tried may be one the previous run left unrecorded.
    fn unsure_after_start(&mut self) -> Option<Instant> {
        let (since, left) = self.unsure_from_start.as_mut()?;
        let since = *since;
        *left -= 1;
        if *left == 0 {
            self.unsure_from_start = None;
        }
        Some(since)
    }

    /// One attempt at a record with local recipients: the duplicate check if its outcome
    /// is unknown, then delivery to whoever does not have it yet.
    async fn attempt(&mut self, record: &Record, message: &MessageRecord, local: &[&str]) -> Step {
        let seq = record.seq;
        let id = dedupe::trace_id(seq, &record.chain);
        let unsure = self.current(seq).unsure_since;
        if let (Some(since), Some(dedupe)) = (unsure, &self.dedupe) {
            if Instant::now() < since + SETTLE {
                return Step::NotBefore(since + SETTLE);
            }
            let now_ms = crate::smtp::now_ms();
            let Some(criteria) = dedupe::search_criteria(&id, record.time_ms, now_ms) else {
                return Step::Retry(format!("no search for trace id {id}"));
            };
            let current = self.current.as_mut().expect("set above");
            let unsettled: Vec<&str> = local
                .iter()
                .copied()
                .filter(|r| !current.settled.contains_key(*r))
                .collect();
            // Only a recipient the standby takes can hold a copy (and has a mailbox to
            // look into): ask the standby first.
            let verdicts = match self.link.probe(&message.mail_from, &unsettled).await {
                Ok(verdicts) => verdicts,
                Err(err) => return Step::Retry(format!("record {seq}: {err}")),
            };
            let mut accepted = Vec::with_capacity(verdicts.len());
            for (rcpt, verdict) in verdicts {
                match verdict {
                    Verdict::Delivered => accepted.push(rcpt),
                    Verdict::Deferred(reply) => return Step::Retry(format!("{rcpt}: {reply}")),
                    refused => {
                        current.settled.insert(rcpt, refused);
                    }
                }
            }
            for rcpt in &accepted {
                match dedupe.holds(rcpt, &criteria).await {
                    Ok(true) => {
                        tracing::info!(
                            seq,
                            rcpt,
                            id,
                            "the standby already has this record's copy; not delivered again"
                        );
                        current.settled.insert(rcpt.clone(), Verdict::Delivered);
                    }
                    Ok(false) => {}
                    Err(err) => return Step::Retry(format!("duplicate check for {rcpt}: {err}")),
                }
            }
        }
        let current = self.current(seq);
        current.unsure_since = None;
        let rest: Vec<&str> = local
            .iter()
            .copied()
            .filter(|r| !current.settled.contains_key(*r))
            .collect();
        if !rest.is_empty() {
            let header = dedupe::received_header(
                &self.apply.hostname,
                self.link.protocol(),
                &id,
                OffsetDateTime::now_utc(),
            );
            let mut body = Vec::with_capacity(header.len() + message.body.len());
            body.extend_from_slice(header.as_bytes());
            body.extend_from_slice(&message.body);
            let verdicts = match self.link.transfer(&message.mail_from, &rest, &body).await {
                Ok(verdicts) => verdicts,
                Err(err) => {
                    if err.after_dot {
                        self.current(seq).unsure_since = Some(Instant::now());
                    }
                    return Step::Retry(format!("record {seq}: {err}"));
                }
            };
            let current = self.current(seq);
            let mut deferred = Vec::new();
            for (rcpt, verdict) in verdicts {
                match verdict {
                    Verdict::Deferred(reply) => deferred.push(format!("{rcpt}: {reply}")),
                    settled => {
                        current.settled.insert(rcpt, settled);
                    }
                }
            }
            if !deferred.is_empty() {
                return Step::Retry(deferred.join("; "));
            }
        }
        outcome(&self.current(seq).settled)
    }
}

/// The final state of a record whose every local recipient is settled.
fn outcome(settled: &BTreeMap<String, Verdict>) -> Step {
    let delivered = settled
        .values()
        .filter(|v| **v == Verdict::Delivered)
        .count();
    let refused: Vec<String> = settled
        .iter()
        .filter_map(|(rcpt, v)| match v {
            Verdict::Refused(reply) => Some(format!("{rcpt}: {reply}")),
            _ => None,
        })
        .collect();
    match (delivered, refused.is_empty()) {
        (0, _) => Step::Finished(DeliveryStatus::Failed, refused.join("; ")),
        (n, true) => Step::Finished(
            DeliveryStatus::Delivered,
            format!("applied to {n} recipient(s)"),
        ),
        (n, false) => Step::Finished(
            DeliveryStatus::Delivered,
            format!(
                "applied to {n} recipient(s); refused: {}",
                refused.join("; ")
            ),
        ),
    }
}

/// Every record up to this seq has been applied (or parked).
pub fn applied_through(journal: &Journal) -> Seq {
    journal
        .undelivered(1)
        .ok()
        .and_then(|q| q.first().map(|(seq, _)| seq - 1))
        .unwrap_or_else(|| journal.head())
}

fn is_local(apply: &Apply, rcpt: &str) -> bool {
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    apply
        .local_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(domain))
}
