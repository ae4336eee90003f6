//! Before a retry: is the copy already there? An earlier attempt may have reached the
//! primary's mailboxes without levee recording it: levee was killed between the MTA's 250
//! and the write of the record's state, or the connection broke after the final dot. Every
//! copy carries the trace id that names its record (see [`crate::trace`]), so before it
//! hands a message over again the worker looks for that id in each local recipient's INBOX
//! at the primary's IMAP server, as its master user (`upstream.primary.master_user`), and
//! delivers only to the recipients that lack it.
//!
//! A copy the MTA accepted may still sit in its queue for a moment, so a record is looked
//! at only [`SETTLE`] after its last attempt. Without a master user configured, or when
//! the search itself fails, the worker delivers anyway: a possible duplicate beats a
//! message held back.

use std::time::Duration;

use levee_config::Config;

use super::Due;
use crate::smtp::envelope::is_local;
use crate::standby::dedupe::{Dedupe, search_criteria, trace_id};

/// How long after an attempt a copy it handed over may still be on its way to the mailbox.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The recipients of `rcpts` whose INBOX at the primary does not hold `due`'s copy (all
/// of them when it cannot be told).
pub async fn lacking<'a>(
    check: &Dedupe,
    config: &Config,
    due: &Due,
    rcpts: &[&'a str],
) -> Vec<&'a str> {
    let id = trace_id(due.seq, &due.chain);
    let Some(criteria) = search_criteria(&id, due.accepted_ms) else {
        return rcpts.to_vec();
    };
    let mut rest = Vec::with_capacity(rcpts.len());
    for &rcpt in rcpts {
        if !is_local(&config.smtp.local_domains, rcpt) {
            rest.push(rcpt);
            continue;
        }
        match check.holds(rcpt, &criteria).await {
            Ok(true) => {
                tracing::info!(
                    seq = due.seq,
                    rcpt,
                    id,
                    "the primary already has this record's copy; not delivered again"
                );
            }
            Ok(false) => rest.push(rcpt),
            Err(err) => {
                tracing::warn!(
                    seq = due.seq,
                    rcpt,
                    %err,
                    "cannot look for an earlier copy at the primary; delivering (it may arrive twice)"
                );
                rest.push(rcpt);
            }
        }
    }
    rest
}
