//! A copy the primary's MTA may hold without having said so. When the connection to it
//! breaks after a message's final dot and before its verdict, the MTA may have queued the
//! message; killed then, it delivers that copy when it comes back, on its own schedule. A
//! second copy sent meanwhile (by the delivery worker, or by the resync after a failover)
//! would arrive twice. Such records are marked in the journal
//! ([`Journal::unconfirmed_mark`]), and whoever would send one again first looks for the
//! MTA's copy in the local recipients' INBOX at the primary ([`super::found`]): found,
//! nothing is sent; not found, the sender waits until the primary has answered for
//! `delivery.unconfirmed_wait` (longer than the MTA takes to retry what it queued) and
//! only then sends its own copy to whoever still lacks it.

use std::time::Duration;

use levee_config::Config;
use levee_journal::Journal;

use super::{Due, found};
use crate::smtp::envelope::is_local;
use crate::smtp::now_ms;
use crate::smtp::route::Routes;
use crate::standby::dedupe::Dedupe;

/// What to do about a record before sending it to the primary again.
#[derive(Debug)]
pub(crate) enum Unconfirmed<'a> {
    /// No unconfirmed copy: send as usual.
    No,
    /// The MTA delivered its copy to every local recipient: nothing to send.
    Arrived,
    /// Not arrived yet, and the MTA may still deliver it: ask again later.
    Waiting(String),
    /// The wait is over: send to these recipients (the others have the copy).
    Send(Vec<&'a str>),
}

/// Looks at `due`'s unconfirmed copy, if the journal says there may be one.
pub(crate) async fn settle<'a>(
    journal: &Journal,
    config: &Config,
    routes: &Routes,
    master: Option<&Dedupe>,
    due: &Due,
    rcpts: &[&'a str],
) -> Result<Unconfirmed<'a>, String> {
    let Some(since) = journal
        .unconfirmed_since(due.seq)
        .map_err(|e| e.to_string())?
    else {
        return Ok(Unconfirmed::No);
    };
    let local = |rcpt: &&str| is_local(&config.smtp.local_domains, rcpt);
    let lacking = match master {
        Some(master) if rcpts.iter().any(local) => {
            let lacking = found::lacking(master, config, due, rcpts).await;
            if !lacking.iter().any(local) {
                // The MTA had the whole transaction: its other recipients are its too.
                tracing::info!(
                    seq = due.seq,
                    "the primary's MTA delivered the copy it had not confirmed"
                );
                done(journal, due.seq);
                return Ok(Unconfirmed::Arrived);
            }
            lacking
        }
        _ => rcpts.to_vec(),
    };
    let from = since.max(routes.primary_answering_since_ms());
    let left = wait_left(from, now_ms(), config.delivery.unconfirmed_wait);
    if !left.is_zero() {
        return Ok(Unconfirmed::Waiting(format!(
            "the primary's MTA may still deliver the copy it took before the connection broke; \
             levee sends its own if it has not arrived in {}s",
            left.as_secs()
        )));
    }
    tracing::warn!(
        seq = due.seq,
        "the copy the primary's MTA did not confirm has not arrived; sending levee's own"
    );
    Ok(Unconfirmed::Send(lacking))
}

/// How much of `wait` is left at `now_ms` when it began at `from_ms`.
fn wait_left(from_ms: u64, now_ms: u64, wait: Duration) -> Duration {
    let until = from_ms.saturating_add(wait.as_millis() as u64);
    Duration::from_millis(until.saturating_sub(now_ms))
}

/// Takes `seq` off the unconfirmed list (its copy arrived, or levee's own went).
pub(crate) fn done(journal: &Journal, seq: levee_journal::Seq) {
    if let Err(err) = journal.unconfirmed_done(seq) {
        tracing::warn!(seq, %err, "cannot clear the unconfirmed mark");
    }
}

/// Marks `seq`: the primary's MTA may hold a copy it did not confirm, since now.
pub(crate) fn mark(journal: &Journal, seq: levee_journal::Seq) {
    match journal.unconfirmed_mark(seq, now_ms()) {
        Ok(()) => tracing::warn!(
            seq,
            "the primary's MTA may have queued this message without confirming it; \
             a second copy waits for it"
        ),
        Err(err) => tracing::error!(seq, %err, "cannot mark a copy the primary did not confirm"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_counts_from_the_later_of_the_break_and_the_primary_s_return() {
        let wait = Duration::from_secs(60);
        assert_eq!(wait_left(1_000, 1_000, wait), wait);
        assert_eq!(wait_left(1_000, 31_000, wait), Duration::from_secs(30));
        assert_eq!(wait_left(1_000, 61_000, wait), Duration::ZERO);
        assert_eq!(wait_left(1_000, 900_000, wait), Duration::ZERO);
        // A clock that went back leaves the whole wait, never a negative one.
        assert_eq!(wait_left(5_000, 1_000, wait), Duration::from_secs(64));
    }
}
