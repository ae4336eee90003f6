//! Store and forward: delivers journaled messages whose first delivery did not happen.
//!
//! A message lands here when the upstream was down at envelope time, failed after the
//! journal had the message, or answered 4xx. The worker reads the record back from the
//! journal (the journal, not memory, is the source of truth), replays the original envelope
//! with XCLIENT (client address, HELO, SASL login) so that the mail server applies the same
//! policy, and retries with exponential backoff until `delivery.max_age`.
//!
//! At start every record still `Pending` (levee stopped between journal and upstream) is
//! retried too: SMTP is at-least-once, and a possible duplicate beats a lost message.
//!
//! The first retry of a record after levee started looks whether an earlier attempt left
//! the copy at the primary already ([`found`]: levee may have died between the MTA's 250
//! and the state write), and delivers only to the recipients that lack it. A copy the MTA
//! may hold unconfirmed (the connection broke after the final dot) waits for it first
//! ([`unconfirmed`]).
//!
//! Each attempt goes to the backend active at that moment, with the same trace header the
//! live path writes (it names the record). While the replica is active its MTA gets only
//! the recipients outside `smtp.local_domains`; the replica's applier delivers the others
//! from the journal (see [`crate::smtp::route`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use levee_config::Config;
use levee_journal::{DeliveryState, DeliveryStatus, Journal, MessageRecord, RecordKind, Seq};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) mod found;
mod transfer;
pub(crate) mod unconfirmed;

pub(crate) use transfer::deliver_to;

use crate::failover::controller::Backend;
use crate::metrics as m;
use crate::smtp::now_ms;
use crate::smtp::reply::Reply;
use crate::smtp::route::{BY_APPLIER, Routes};
use crate::standby::dedupe::Dedupe;

/// How one delivery attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    Delivered(Reply),
    /// Every recipient or the message was refused permanently.
    Refused(Reply),
    /// Try again later.
    Temporary(String),
    /// The upstream could not be reached at all; try again later.
    Unreachable(String),
    /// Every recipient is local and the replica is active: its applier delivers them.
    Applier,
    /// Every recipient's copy was at the primary already (an earlier attempt got there).
    Found,
    /// The connection broke after the final dot, before the verdict: the MTA may hold the
    /// message (see [`unconfirmed`]). Retried like a temporary failure.
    Unconfirmed(String),
    /// The look for an earlier copy failed: retried like a temporary failure, looking again.
    LookAgain(String),
}

/// One journaled message to deliver, with what its trace header names.
#[derive(Debug)]
pub(crate) struct Due {
    pub seq: Seq,
    pub chain: [u8; 32],
    pub accepted_ms: u64,
    pub message: MessageRecord,
}

/// Runs until `shutdown`.
pub async fn run(
    journal: Journal,
    config: Arc<Config>,
    routes: Routes,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let idle_poll = Duration::from_secs(1);
    let check = crate::resync::primary_master(&config);
    let mut tried = HashSet::new();
    loop {
        let pass = deliver_due(
            &journal,
            &config,
            &routes,
            (check.as_ref(), &mut tried),
            &shutdown,
        );
        let next_due = match pass.await {
            Ok(next_due) => next_due,
            Err(err) => {
                tracing::error!(%err, "delivery worker cannot read the journal");
                Some(now_ms() + 1000)
            }
        };
        let wait = next_due
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
            .unwrap_or(idle_poll)
            .min(idle_poll);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Turns `Pending` records left by a stop into due deferrals. Called once before serving.
pub fn recover(journal: &Journal) -> Result<usize, levee_journal::JournalError> {
    let mut recovered = 0;
    for (seq, mut state) in journal.undelivered(usize::MAX)? {
        if state.status == DeliveryStatus::Pending {
            state.status = DeliveryStatus::Deferred;
            state.next_attempt_ms = now_ms();
            state.updated_ms = now_ms();
            state.last_reply = Some("levee restarted before delivery completed".into());
            journal.set_state(seq, &state)?;
            recovered += 1;
        }
    }
    if recovered > 0 {
        tracing::info!(
            recovered,
            "undelivered messages from before the restart queued"
        );
    }
    Ok(recovered)
}

/// Attempts every due message once, `delivery.workers` at a time; returns when the next
/// one falls due. A pass stops starting new attempts once the upstream proves unreachable:
/// every further attempt would only wait for the same connect timeout.
///
/// `check` is the master-user access to the primary's mailboxes, and the records tried
/// since levee started: only a record's first attempt after a start looks for an earlier
/// copy (the outcome of the one before may have been lost with the process; every later
/// one's outcome is known, and a copy the MTA may hold unconfirmed has its own rule, see
/// [`unconfirmed`]).
async fn deliver_due(
    journal: &Journal,
    config: &Arc<Config>,
    routes: &Routes,
    check: (Option<&Dedupe>, &mut HashSet<Seq>),
    shutdown: &CancellationToken,
) -> Result<Option<u64>, levee_journal::JournalError> {
    let (check, tried) = check;
    let queue = journal.undelivered(10_000)?;
    let queue_len = queue.len();
    metrics::gauge!(m::DELIVERY_QUEUE).set(queue_len as f64);
    let mut next_due = NextDue::default();
    let mut running = JoinSet::new();
    let mut unreachable = false;
    for (seq, state) in queue {
        if shutdown.is_cancelled() || unreachable {
            break;
        }
        if state.status != DeliveryStatus::Deferred {
            continue;
        }
        // A first attempt with the check waits until an earlier one's copy has settled.
        let look = check.is_some() && !tried.contains(&seq);
        let not_before = match look {
            true => state
                .next_attempt_ms
                .max(state.updated_ms + found::SETTLE.as_millis() as u64),
            false => state.next_attempt_ms,
        };
        if not_before > now_ms() {
            next_due.note(not_before);
            continue;
        }
        tried.insert(seq);
        let Some(record) = journal.get(seq)? else {
            continue;
        };
        let RecordKind::Message(message) = record.kind else {
            // A mailbox change happened at the primary already; only the replica applies it.
            let mut done = state.clone();
            done.status = DeliveryStatus::Delivered;
            journal.set_state(seq, &done)?;
            continue;
        };
        while running.len() >= config.delivery.workers {
            if let Some(done) = running.join_next().await {
                unreachable |= settle(journal, config, done, (&mut next_due, tried))?;
            }
        }
        let (config, routes) = (config.clone(), routes.clone());
        let (master, look) = (check.cloned(), look);
        let journal = journal.clone();
        let received_ms = record.time_ms;
        let due = Due {
            seq,
            chain: record.chain,
            accepted_ms: received_ms,
            message,
        };
        running.spawn(async move {
            let check = (master.as_ref(), look);
            let outcome = attempt(&journal, &config, &routes, check, &due).await;
            (seq, state, received_ms, outcome)
        });
    }
    while let Some(done) = running.join_next().await {
        settle(journal, config, done, (&mut next_due, tried))?;
    }
    // Records no longer queued are not tried again.
    if tried.len() > 2 * queue_len.max(1024) {
        tried.retain(|seq| {
            journal
                .state(*seq)
                .ok()
                .flatten()
                .is_some_and(|s| s.status.is_open())
        });
    }
    Ok(next_due.0)
}

type Finished = (Seq, DeliveryState, u64, Attempt);

/// Records the outcome of one attempt; true when the upstream could not be reached.
fn settle(
    journal: &Journal,
    config: &Config,
    done: Result<Finished, tokio::task::JoinError>,
    (next_due, tried): (&mut NextDue, &mut HashSet<Seq>),
) -> Result<bool, levee_journal::JournalError> {
    let Ok((seq, old, received_ms, outcome)) = done else {
        tracing::error!("delivery attempt panicked; the message stays queued");
        return Ok(false);
    };
    let unreachable = matches!(outcome, Attempt::Unreachable(_));
    if matches!(outcome, Attempt::LookAgain(_)) {
        // The next attempt looks for the earlier copy again.
        tried.remove(&seq);
    }
    if matches!(outcome, Attempt::Unconfirmed(_)) {
        unconfirmed::mark(journal, seq);
    }
    // Left to the replica's applier, the record goes on the primary's resync list, which
    // still has to wait for a copy the primary's MTA may hold.
    let settled_at_primary = !matches!(outcome, Attempt::Applier);
    let new_state = next_state(config, &old, received_ms, outcome, seq);
    if !new_state.status.is_open() && settled_at_primary {
        unconfirmed::done(journal, seq);
    }
    if new_state.status == DeliveryStatus::Deferred {
        next_due.note(new_state.next_attempt_ms);
    }
    crate::resync::set_state(journal, seq, &new_state)?;
    Ok(unreachable)
}

/// The earliest time at which a queued message falls due.
#[derive(Debug, Default)]
struct NextDue(Option<u64>);

impl NextDue {
    fn note(&mut self, at_ms: u64) {
        self.0 = Some(self.0.map_or(at_ms, |d| d.min(at_ms)));
    }
}

fn next_state(
    config: &Config,
    old: &DeliveryState,
    received_ms: u64,
    attempt: Attempt,
    seq: Seq,
) -> DeliveryState {
    let now = now_ms();
    let attempts = old.attempts + 1;
    let (status, reply) = match attempt {
        Attempt::Delivered(reply) => {
            metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
            tracing::info!(seq, attempts, "deferred message delivered");
            (DeliveryStatus::Delivered, reply.summary())
        }
        Attempt::Applier => {
            metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
            tracing::info!(seq, "deferred message left to the replica's applier");
            (DeliveryStatus::Delivered, BY_APPLIER.to_string())
        }
        Attempt::Found => {
            metrics::counter!(m::MESSAGES_DELIVERED).increment(1);
            (DeliveryStatus::Delivered, FOUND.to_string())
        }
        Attempt::Refused(reply) => {
            // TODO(issue 4/5 follow-up): send a DSN to the sender for permanent refusals.
            metrics::counter!(m::MESSAGES_FAILED).increment(1);
            tracing::error!(seq, reply = %reply, "deferred message refused permanently");
            (DeliveryStatus::Failed, reply.summary())
        }
        Attempt::Temporary(why)
        | Attempt::Unreachable(why)
        | Attempt::Unconfirmed(why)
        | Attempt::LookAgain(why) => {
            let age = Duration::from_millis(now.saturating_sub(received_ms));
            if age > config.delivery.max_age {
                metrics::counter!(m::MESSAGES_FAILED).increment(1);
                tracing::error!(seq, %why, "message expired undelivered");
                (
                    DeliveryStatus::Failed,
                    format!("expired after {age:?}: {why}"),
                )
            } else {
                tracing::debug!(seq, %why, attempts, "delivery retry failed");
                (DeliveryStatus::Deferred, why)
            }
        }
    };
    DeliveryState {
        status,
        attempts,
        next_attempt_ms: now + backoff(config, attempts).as_millis() as u64,
        last_reply: Some(reply),
        updated_ms: now,
    }
}

/// `retry_initial * 2^(attempts-1)`, capped at `retry_max`.
fn backoff(config: &Config, attempts: u32) -> Duration {
    let initial = config.delivery.retry_initial;
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    initial
        .saturating_mul(factor)
        .min(config.delivery.retry_max)
}

/// What the state of a record says when an earlier attempt's copy was found.
const FOUND: &str = "an earlier attempt's copy is in every recipient's mailbox at the primary";

/// One delivery of one message over a fresh connection to the active backend, to the
/// recipients that do not have it yet.
async fn attempt(
    journal: &Journal,
    config: &Config,
    routes: &Routes,
    (check, look): (Option<&Dedupe>, bool),
    due: &Due,
) -> Attempt {
    let backend = routes.active();
    let mut rcpts: Vec<&str> = (due.message.rcpt_to.iter())
        .map(String::as_str)
        .filter(|rcpt| !routes.left_to_applier(backend, rcpt))
        .collect();
    if rcpts.is_empty() {
        return Attempt::Applier;
    }
    if backend == Backend::Primary {
        match unconfirmed::settle(journal, config, routes, check, due, &rcpts).await {
            Ok(unconfirmed::Unconfirmed::No) => {}
            Ok(unconfirmed::Unconfirmed::Arrived) => return Attempt::Found,
            Ok(unconfirmed::Unconfirmed::Waiting(why)) | Err(why) => {
                return Attempt::Temporary(why);
            }
            Ok(unconfirmed::Unconfirmed::Send(lacking)) => {
                return deliver_to(config, routes, backend, due, &lacking).await;
            }
        }
    }
    if let (Backend::Primary, Some(check), true) = (backend, check, look) {
        rcpts = match found::lacking_known(check, config, due, &rcpts).await {
            Ok(lacking) => lacking,
            Err(why) if found::may_look_again(config, routes) => return Attempt::LookAgain(why),
            Err(why) => {
                tracing::warn!(seq = due.seq, %why, "delivering anyway; it may arrive twice");
                rcpts
            }
        };
        if rcpts.is_empty() {
            return Attempt::Found;
        }
    }
    deliver_to(config, routes, backend, due, &rcpts).await
}
