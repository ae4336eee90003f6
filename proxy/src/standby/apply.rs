//! The applier: delivers every replicated message to the standby mail server, in journal
//! order, so that the replica site's mailboxes are warm when a failover comes.
//!
//! Only recipients in `apply.local_domains` are delivered: outbound mail was already
//! relayed by the primary and must not leave a second time. The applier's progress is the
//! delivery state of each record in the replica's own journal, made durable before the
//! next record is applied, so a restart resumes exactly where it stopped. A record the
//! standby refuses permanently is parked (state `Failed`, a metric, an error log), never
//! dropped silently; a temporary failure stops the applier at that record until it passes,
//! which keeps the order.

use std::time::Duration;

use levee_config::Apply;
use levee_journal::{DeliveryState, DeliveryStatus, Journal, MessageRecord, RecordKind, Seq};
use levee_replica::metrics as rm;
use tokio_util::sync::CancellationToken;

use crate::smtp::now_ms;
use crate::smtp::reply::Reply;
use crate::smtp::upstream::{ClientIdentity, Upstream, UpstreamError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How applying one record ended.
#[derive(Debug)]
enum Applied {
    /// Every local recipient has it (or there was none).
    Done(String),
    /// The standby refused it for good.
    Parked(String),
    /// Try the same record again later.
    Retry(String),
}

/// Runs until `shutdown`.
pub async fn run(journal: Journal, apply: Apply, shutdown: CancellationToken) {
    let mut head = journal.watch_head();
    loop {
        let progressed = match apply_pending(&journal, &apply, &shutdown).await {
            Ok(progressed) => progressed,
            Err(err) => {
                tracing::error!(%err, "applier cannot use the journal");
                false
            }
        };
        let wait = if progressed {
            Duration::ZERO
        } else {
            apply.retry
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = head.changed(), if !progressed => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Applies pending records in order; stops at the first that must be retried. Returns
/// whether it applied anything.
async fn apply_pending(
    journal: &Journal,
    apply: &Apply,
    shutdown: &CancellationToken,
) -> Result<bool, levee_journal::JournalError> {
    let mut progressed = false;
    for (seq, state) in journal.undelivered(256)? {
        if shutdown.is_cancelled() {
            break;
        }
        let Some(record) = journal.get(seq)? else {
            continue;
        };
        let RecordKind::Message(message) = record.kind else {
            continue;
        };
        let outcome = deliver(apply, seq, &message).await;
        let (status, note) = match outcome {
            Applied::Done(note) => (DeliveryStatus::Delivered, note),
            Applied::Parked(note) => {
                metrics::counter!(rm::APPLY_PARKED).increment(1);
                tracing::error!(seq, %note, "standby refused the message permanently; parked");
                (DeliveryStatus::Failed, note)
            }
            Applied::Retry(note) => {
                tracing::warn!(seq, %note, "standby delivery failed; will retry this record");
                let retry = DeliveryState {
                    status: DeliveryStatus::Pending,
                    attempts: state.attempts + 1,
                    next_attempt_ms: now_ms() + apply.retry.as_millis() as u64,
                    last_reply: Some(note),
                    updated_ms: now_ms(),
                };
                journal.set_state(seq, &retry)?;
                return Ok(progressed);
            }
        };
        journal.set_state(
            seq,
            &DeliveryState {
                status,
                attempts: state.attempts + 1,
                next_attempt_ms: 0,
                last_reply: Some(note),
                updated_ms: now_ms(),
            },
        )?;
        // Durable before the next record: a restart must not apply this one again.
        journal.flush().await?;
        metrics::gauge!(rm::APPLIED_SEQ).set(seq as f64);
        progressed = true;
    }
    Ok(progressed)
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

async fn deliver(apply: &Apply, seq: Seq, message: &MessageRecord) -> Applied {
    let local: Vec<&String> = message
        .rcpt_to
        .iter()
        .filter(|r| is_local(apply, r))
        .collect();
    if local.is_empty() {
        return Applied::Done("no local recipients at the replica".into());
    }
    match transfer(apply, message, &local).await {
        Ok(applied) => applied,
        Err(err) => Applied::Retry(format!("record {seq}: {err}")),
    }
}

async fn transfer(
    apply: &Apply,
    message: &MessageRecord,
    local: &[&String],
) -> Result<Applied, UpstreamError> {
    let lmtp = apply.lmtp.is_some();
    let mut standby = match (apply.lmtp, apply.smtp) {
        (Some(addr), _) => {
            Upstream::connect_lmtp(addr, CONNECT_TIMEOUT, REPLY_TIMEOUT, &apply.hostname).await?
        }
        (None, Some(addr)) => {
            Upstream::open(
                addr,
                CONNECT_TIMEOUT,
                REPLY_TIMEOUT,
                &apply.hostname,
                &ClientIdentity::default(),
            )
            .await?
        }
        (None, None) => {
            return Ok(Applied::Retry("no standby configured".into()));
        }
    };
    let mail = format!("MAIL FROM:<{}>\r\n", message.mail_from);
    let verdict = standby.command(mail.as_bytes()).await?;
    if !verdict.is_positive() {
        return Ok(judge(verdict));
    }
    let mut accepted = 0;
    let mut refused = Vec::new();
    for rcpt in local {
        let verdict = standby
            .command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await?;
        if verdict.is_positive() {
            accepted += 1;
        } else if verdict.code() < 500 {
            return Ok(Applied::Retry(verdict.summary()));
        } else {
            refused.push(format!("{rcpt}: {}", verdict.summary()));
        }
    }
    if accepted == 0 {
        return Ok(Applied::Parked(refused.join("; ")));
    }
    if let Some(refusal) = standby.begin_body(&message.body).await? {
        return Ok(judge(refusal));
    }
    let verdicts = if lmtp {
        standby.end_body_lmtp(accepted).await?
    } else {
        vec![standby.end_body().await?]
    };
    // No QUIT round trip here: the outcome must reach the journal as soon as the standby
    // has the message (dropping the connection after the final reply loses nothing).
    drop(standby);
    if let Some(temporary) = verdicts.iter().find(|v| (400..500).contains(&v.code())) {
        // Some recipients may have it already; retrying them is the lesser evil.
        return Ok(Applied::Retry(temporary.summary()));
    }
    refused.extend(
        verdicts
            .iter()
            .filter(|v| v.code() >= 500)
            .map(Reply::summary),
    );
    if refused.is_empty() {
        Ok(Applied::Done(format!("applied to {accepted} recipient(s)")))
    } else if verdicts.iter().any(Reply::is_positive) {
        Ok(Applied::Done(format!(
            "applied; refused: {}",
            refused.join("; ")
        )))
    } else {
        Ok(Applied::Parked(refused.join("; ")))
    }
}

fn judge(reply: Reply) -> Applied {
    if reply.code() >= 500 {
        Applied::Parked(reply.summary())
    } else {
        Applied::Retry(reply.summary())
    }
}
