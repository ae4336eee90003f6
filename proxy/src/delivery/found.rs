//! Before a retry: is the copy already there? An earlier attempt may have reached the
//! primary's mailboxes without levee recording it: levee was killed between the MTA's 250
//! and the write of the record's state, or the connection broke after the final dot. Every
//! copy carries the trace id that names its record (see [`crate::trace`]), so before it
//! hands a message over again the worker looks for that id in each local recipient's INBOX
//! at the primary's IMAP server, as its master user (`upstream.primary.master_user`), and
//! delivers only to the recipients that lack it.
//!
//! A copy the MTA accepted may still sit in its queue for a moment, so a record is looked
//! at only [`SETTLE`] after its last attempt. When a search fails (a large INBOX under a
//! busy server may not answer in time), the look is repeated later, until the primary has
//! answered for `delivery.unconfirmed_wait`; past that, or without a master user
//! configured, the copy goes anyway: a possible duplicate beats a message held back.

use std::time::Duration;

use levee_config::Config;

use super::Due;
use crate::smtp::envelope::is_local;
use crate::smtp::route::Routes;
use crate::standby::dedupe::{Dedupe, search_criteria, trace_id};

/// How long after an attempt a copy it handed over may still be on its way to the mailbox.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The recipients of `rcpts` whose INBOX at the primary does not hold `due`'s copy; a
/// recipient whose INBOX could not be searched counts as lacking it.
pub async fn lacking<'a>(
    check: &Dedupe,
    config: &Config,
    due: &Due,
    rcpts: &[&'a str],
) -> Vec<&'a str> {
    look(check, config, due, rcpts)
        .await
        .into_iter()
        .filter(|(_, holds)| *holds != Some(true))
        .map(|(rcpt, _)| rcpt)
        .collect()
}

/// As [`lacking`], but `Err` when a search failed (its INBOX may or may not hold the
/// copy): the caller looks again later rather than risk a second copy.
pub async fn lacking_known<'a>(
    check: &Dedupe,
    config: &Config,
    due: &Due,
    rcpts: &[&'a str],
) -> Result<Vec<&'a str>, String> {
    let mut rest = Vec::with_capacity(rcpts.len());
    for (rcpt, holds) in look(check, config, due, rcpts).await {
        match holds {
            Some(true) => {}
            Some(false) => rest.push(rcpt),
            None => return Err(format!("cannot look for an earlier copy in {rcpt}'s INBOX")),
        }
    }
    Ok(rest)
}

/// Whether a failed look may still be repeated before delivering regardless: until the
/// primary has answered for `delivery.unconfirmed_wait` (since levee started, or since
/// the primary last failed).
pub fn may_look_again(config: &Config, routes: &Routes) -> bool {
    let until = routes
        .primary_answering_since_ms()
        .saturating_add(config.delivery.unconfirmed_wait.as_millis() as u64);
    crate::smtp::now_ms() < until
}

/// Each recipient with whether its INBOX at the primary holds `due`'s copy (`None`: the
/// search failed); recipients outside `smtp.local_domains` are never there (`false`).
async fn look<'a>(
    check: &Dedupe,
    config: &Config,
    due: &Due,
    rcpts: &[&'a str],
) -> Vec<(&'a str, Option<bool>)> {
    let id = trace_id(due.seq, &due.chain);
    let Some(criteria) = search_criteria(&id, due.accepted_ms, crate::smtp::now_ms()) else {
        return rcpts.iter().map(|&r| (r, Some(false))).collect();
    };
    let mut out = Vec::with_capacity(rcpts.len());
    for &rcpt in rcpts {
        if !is_local(&config.smtp.local_domains, rcpt) {
            out.push((rcpt, Some(false)));
            continue;
        }
        let holds = match check.holds(rcpt, &criteria).await {
            Ok(true) => {
                tracing::info!(
                    seq = due.seq,
                    rcpt,
                    id,
                    "the primary already has this record's copy; not delivered again"
                );
                Some(true)
            }
            Ok(false) => Some(false),
            Err(err) => {
                tracing::warn!(
                    seq = due.seq,
                    rcpt,
                    %err,
                    "cannot look for an earlier copy at the primary"
                );
                None
            }
        };
        out.push((rcpt, holds));
    }
    out
}
