//! A client that loses the reply to its final dot (the connection broke, levee restarted
//! after the journal had the message) cannot know the message arrived, and sends it again,
//! as RFC 5321 (4.5.4.1) has it do. levee recognises such a resend (the same Message-ID,
//! envelope sender, recipients and bytes, within `smtp.resend_window`) and answers 250
//! with the first record's id, journaling and delivering nothing again.

use std::time::Duration;

use levee_journal::{DeliveryStatus, Journal, RecordKind, Seq};

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
        // A copy the mail server refused outright was refused to its client too: that
        // client was told no, and its new try is a message of its own.
        let refused = journal
            .state(seq)
            .ok()
            .flatten()
            .is_some_and(|state| state.status == DeliveryStatus::Rejected);
        if let RecordKind::Message(earlier) = &record.kind
            && !refused
            && same(&earlier.mail_from, &earlier.rcpt_to, &earlier.body, sent)
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
    use levee_journal::{DeliveryState, JournalOptions, MessageRecord, NewRecord};

    #[tokio::test]
    async fn a_copy_its_client_was_refused_is_no_earlier_copy() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let rcpts = vec!["alice@example.test".to_string()];
        let body = b"Message-ID: <r@x>\r\n\r\nhi\r\n".to_vec();
        let record = NewRecord {
            time_ms: 1_000_000,
            kind: RecordKind::Message(MessageRecord {
                mail_from: "s@x.org".into(),
                rcpt_to: rcpts.clone(),
                client: Default::default(),
                message_id: Some("r@x".into()),
                body: body.clone(),
            }),
        };
        let seq = journal.append(record).await.unwrap().seq;
        let again = Sent {
            message_id: Some("r@x"),
            mail_from: "s@x.org",
            rcpts: &rcpts,
            body: &body,
        };
        let window = Duration::from_secs(60);
        assert_eq!(earlier_copy(&journal, window, &again, 1_000_500), Some(seq));
        // Past the window, or with the window off, it is a message of its own.
        assert_eq!(
            earlier_copy(&journal, window, &again, 1_000_000 + 61_000),
            None
        );
        assert_eq!(
            earlier_copy(&journal, Duration::ZERO, &again, 1_000_500),
            None
        );
        let mut refused = DeliveryState::pending(1_000_100);
        refused.status = DeliveryStatus::Rejected;
        journal.set_state(seq, &refused).unwrap();
        assert_eq!(earlier_copy(&journal, window, &again, 1_000_500), None);
    }

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
