//! A client that loses the reply to its final dot (the connection broke, levee restarted
//! after the journal had the message) cannot know the message arrived, and sends it again,
//! as RFC 5321 (4.5.4.1) has it do. levee recognises such a resend (the same Message-ID,
//! envelope sender, recipients and bytes, within `smtp.resend_window`) and answers 250
//! with the first record's id, journaling and delivering nothing again.

use std::time::Duration;

use levee_journal::{Journal, RecordKind, Seq};

/// Records looked at per resend check (the newest with that Message-ID first).
const CANDIDATES: usize = 16;

/// What a message is, for the check.
pub(super) struct Sent<'a> {
    pub message_id: Option<&'a str>,
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub body: &'a [u8],
}

/// The record `sent` repeats, if the journal holds one accepted within `window` of `now_ms`.
pub(super) fn earlier_copy(
    journal: &Journal,
    window: Duration,
    sent: &Sent<'_>,
    now_ms: u64,
) -> Option<Seq> {
    let id = sent.message_id.filter(|id| !id.is_empty())?;
    if window.is_zero() {
        return None;
    }
    let since = now_ms.saturating_sub(window.as_millis() as u64);
    let seqs = match journal.by_message_id(id) {
        Ok(seqs) => seqs,
        Err(err) => {
            tracing::warn!(%err, "cannot look for an earlier copy of a message; journaling it");
            return None;
        }
    };
    for &seq in seqs.iter().rev().take(CANDIDATES) {
        let Ok(Some(record)) = journal.get(seq) else {
            continue;
        };
        if record.time_ms < since {
            break;
        }
        if let RecordKind::Message(earlier) = &record.kind
            && same(
                earlier.mail_from.as_str(),
                &earlier.rcpt_to,
                &earlier.body,
                sent,
            )
        {
            return Some(seq);
        }
    }
    None
}

/// The same envelope (addresses compared without case, recipients in any order) and the
/// same bytes.
fn same(mail_from: &str, rcpts: &[String], body: &[u8], sent: &Sent<'_>) -> bool {
    let set = |rcpts: &[String]| {
        let mut set: Vec<String> = rcpts.iter().map(|r| r.to_ascii_lowercase()).collect();
        set.sort_unstable();
        set.dedup();
        set
    };
    mail_from.eq_ignore_ascii_case(sent.mail_from)
        && body == sent.body
        && set(rcpts) == set(sent.rcpts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent<'a>(from: &'a str, rcpts: &'a [String], body: &'a [u8]) -> Sent<'a> {
        Sent {
            message_id: Some("a@b"),
            mail_from: from,
            rcpts,
            body,
        }
    }

    #[test]
    fn a_resend_has_the_same_envelope_and_bytes() {
        let rcpts = vec!["Alice@Example.test".to_string(), "bob@example.test".into()];
        let again = vec!["bob@example.test".to_string(), "alice@example.test".into()];
        let body = b"Subject: x\r\n\r\nhello\r\n";
        assert!(same(
            "s@x.org",
            &rcpts,
            body,
            &sent("S@X.org", &again, body)
        ));
        // Another sender, another recipient list, other bytes: a message of its own.
        assert!(!same(
            "s@x.org",
            &rcpts,
            body,
            &sent("t@x.org", &again, body)
        ));
        let fewer = vec!["bob@example.test".to_string()];
        assert!(!same(
            "s@x.org",
            &rcpts,
            body,
            &sent("s@x.org", &fewer, body)
        ));
        let edited = b"Subject: x\r\n\r\nhello!\r\n";
        assert!(!same(
            "s@x.org",
            &rcpts,
            body,
            &sent("s@x.org", &again, edited)
        ));
    }
}
