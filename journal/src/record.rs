//! The record types callers hand to and get back from the journal, and the
//! hash chain over them.
//!
//! The chain input is a hand-specified byte layout rather than the postcard
//! storage encoding, so that another implementation (an auditor's script, the
//! replica) can recompute it without depending on serde details. The exact
//! formula is documented at the crate root.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mailbox::{MailboxChange, MailboxRecord};

/// Sequence number of a record: 1-based and gap-free.
pub type Seq = u64;

/// Domain-separation prefix of the chain input; bump it if the layout changes.
pub(crate) const CHAIN_MAGIC: &[u8; 4] = b"LJC1";

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// Wall-clock time of acceptance, milliseconds since the Unix epoch (UTC).
    pub time_ms: u64,
    /// What happened.
    pub kind: RecordKind,
}

impl NewRecord {
    /// An audit record: `actor` did `action` (`detail` says how), at `time_ms`.
    pub fn audit(time_ms: u64, actor: String, action: &str, detail: String) -> NewRecord {
        NewRecord {
            time_ms,
            kind: RecordKind::Audit(AuditRecord {
                actor,
                action: action.to_string(),
                detail,
            }),
        }
    }
}

/// The payload of a record. New variants are only ever added at the end, so
/// older records keep decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// A message accepted from a client.
    Message(MessageRecord),
    /// An administrative or compliance event.
    Audit(AuditRecord),
    /// A change an IMAP client made to its mailboxes at the primary (the replica's
    /// applier makes it there too).
    Mailbox(MailboxRecord),
    /// A change an IMAP client made to its mailboxes at the replica while that was the
    /// active site: the replica has it; the primary gets it before a failback (it goes on
    /// the primary's work list, [`crate::Journal::resync_mark`]).
    MailboxAtReplica(MailboxRecord),
}

/// One accepted message, envelope and raw content.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Envelope sender (empty for the null reverse-path).
    pub mail_from: String,
    /// Envelope recipients, in the order they were accepted.
    pub rcpt_to: Vec<String>,
    /// Who sent it.
    pub client: ClientInfo,
    /// The Message-ID the caller parsed from the header, if any.
    pub message_id: Option<String>,
    /// Raw message bytes exactly as received (already un-dot-stuffed).
    pub body: Vec<u8>,
}

/// The connection a message came in on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Peer address, e.g. `192.0.2.1:53124`.
    pub addr: Option<String>,
    /// HELO/EHLO argument.
    pub helo: Option<String>,
    /// Authenticated user, if the session authenticated.
    pub authenticated_user: Option<String>,
    /// Name of the listener that accepted the connection.
    pub listener: String,
    /// Whether the session was protected by TLS.
    pub tls: bool,
}

/// An administrative event kept in the same tamper-evident chain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// Free-form detail.
    pub detail: String,
}

/// What `append` reports once the record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: Seq,
    /// The record's chain hash.
    pub chain: [u8; 32],
    /// SHA-256 of the raw body (of the empty string for records without a body).
    pub body_sha256: [u8; 32],
}

/// A stored record, body decompressed (the message body is inside `kind`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number.
    pub seq: Seq,
    /// Acceptance time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Payload, body included.
    pub kind: RecordKind,
    /// SHA-256 of the raw body.
    pub body_sha256: [u8; 32],
    /// Chain hash of the previous record (`[0; 32]` for seq 1).
    pub prev_chain: [u8; 32],
    /// This record's chain hash.
    pub chain: [u8; 32],
}

impl RecordKind {
    /// The body bytes carried by this kind (empty for kinds without one).
    pub fn body(&self) -> &[u8] {
        match self {
            RecordKind::Message(m) => &m.body,
            RecordKind::Mailbox(MailboxRecord {
                change: MailboxChange::Append { body, .. },
                ..
            })
            | RecordKind::MailboxAtReplica(MailboxRecord {
                change: MailboxChange::Append { body, .. },
                ..
            }) => body,
            _ => &[],
        }
    }

    /// Moves the body out, leaving the header-only form that is stored and
    /// hashed separately from the body.
    pub(crate) fn take_body(&mut self) -> Vec<u8> {
        match self {
            RecordKind::Message(m) => std::mem::take(&mut m.body),
            RecordKind::Mailbox(MailboxRecord {
                change: MailboxChange::Append { body, .. },
                ..
            })
            | RecordKind::MailboxAtReplica(MailboxRecord {
                change: MailboxChange::Append { body, .. },
                ..
            }) => std::mem::take(body),
            _ => Vec::new(),
        }
    }

    pub(crate) fn put_body(&mut self, body: Vec<u8>) {
        match self {
            RecordKind::Message(m) => m.body = body,
            RecordKind::Mailbox(MailboxRecord {
                change: MailboxChange::Append { body: slot, .. },
                ..
            })
            | RecordKind::MailboxAtReplica(MailboxRecord {
                change: MailboxChange::Append { body: slot, .. },
                ..
            }) => *slot = body,
            _ => {}
        }
    }

    pub(crate) fn has_body(&self) -> bool {
        matches!(
            self,
            RecordKind::Message(_)
                | RecordKind::Mailbox(MailboxRecord {
                    change: MailboxChange::Append { .. },
                    ..
                })
                | RecordKind::MailboxAtReplica(MailboxRecord {
                    change: MailboxChange::Append { .. },
                    ..
                })
        )
    }

    /// Whether the record has something to deliver or apply, and so a delivery state
    /// (messages, and mailbox changes for the replica's applier).
    pub fn needs_delivery(&self) -> bool {
        matches!(self, RecordKind::Message(_) | RecordKind::Mailbox(_))
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The bytes the chain hashes for one record (see the crate docs). Any body
/// inside `kind` is ignored: the body enters only through its length and hash.
pub(crate) fn canonical_bytes(
    seq: Seq,
    time_ms: u64,
    kind: &RecordKind,
    body_len: u64,
    body_sha256: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(CHAIN_MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    match kind {
        RecordKind::Message(m) => {
            out.push(1);
            put_str(&mut out, &m.mail_from);
            put_len(&mut out, m.rcpt_to.len());
            for rcpt in &m.rcpt_to {
                put_str(&mut out, rcpt);
            }
            put_opt(&mut out, m.client.addr.as_deref());
            put_opt(&mut out, m.client.helo.as_deref());
            put_opt(&mut out, m.client.authenticated_user.as_deref());
            put_str(&mut out, &m.client.listener);
            out.push(u8::from(m.client.tls));
            put_opt(&mut out, m.message_id.as_deref());
        }
        RecordKind::Audit(a) => {
            out.push(2);
            put_str(&mut out, &a.actor);
            put_str(&mut out, &a.action);
            put_str(&mut out, &a.detail);
        }
        RecordKind::Mailbox(m) => crate::mailbox::canonical(&mut out, m, 3),
        RecordKind::MailboxAtReplica(m) => crate::mailbox::canonical(&mut out, m, 4),
    }
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(body_sha256);
    out
}

/// `chain = SHA-256(prev_chain || canonical)`.
pub(crate) fn chain_hash(prev_chain: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_chain);
    h.update(canonical);
    h.finalize().into()
}

/// Checks one record on its own: that it links to `prev_chain`, that
/// `body_sha256` is the SHA-256 of its body and that `chain` is what the
/// documented formula gives. `Err` says what is wrong. Pure: this is what
/// [`Journal::append_replicated`](crate::Journal::append_replicated) checks,
/// minus where the record must go.
pub fn check_chain(record: &Record, prev_chain: &[u8; 32]) -> Result<(), String> {
    if &record.prev_chain != prev_chain {
        return Err(PREV_CHAIN_MISMATCH.into());
    }
    let body = record.kind.body();
    if sha256(body) != record.body_sha256 {
        return Err(BODY_HASH_MISMATCH.into());
    }
    let canonical = canonical_bytes(
        record.seq,
        record.time_ms,
        &record.kind,
        body.len() as u64,
        &record.body_sha256,
    );
    if chain_hash(prev_chain, &canonical) != record.chain {
        return Err(CHAIN_MISMATCH.into());
    }
    Ok(())
}

pub(crate) const PREV_CHAIN_MISMATCH: &str = "prev_chain is not the chain of the record before it";
pub(crate) const BODY_HASH_MISMATCH: &str = "body_sha256 is not the SHA-256 of the body";
pub(crate) const CHAIN_MISMATCH: &str = "chain is not the hash the documented formula gives";

pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    // usize -> u64 cannot lose bits on any supported target.
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str) -> RecordKind {
        RecordKind::Message(MessageRecord {
            mail_from: from.into(),
            rcpt_to: vec!["b@example.org".into()],
            message_id: Some("id@x".into()),
            body: b"ignored".to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn canonical_bytes_ignore_the_inline_body_but_not_its_hash() {
        let h = sha256(b"body");
        let mut without = msg("a@x");
        without.take_body();
        assert_eq!(
            canonical_bytes(1, 2, &msg("a@x"), 4, &h),
            canonical_bytes(1, 2, &without, 4, &h)
        );
        assert_ne!(
            canonical_bytes(1, 2, &msg("a@x"), 4, &h),
            canonical_bytes(1, 2, &msg("a@x"), 4, &sha256(b"other"))
        );
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_unambiguous() {
        let h = sha256(b"");
        let a = RecordKind::Audit(AuditRecord {
            actor: "ab".into(),
            action: "c".into(),
            detail: String::new(),
        });
        let b = RecordKind::Audit(AuditRecord {
            actor: "a".into(),
            action: "bc".into(),
            detail: String::new(),
        });
        assert_ne!(
            canonical_bytes(1, 0, &a, 0, &h),
            canonical_bytes(1, 0, &b, 0, &h)
        );
    }

    #[test]
    fn canonical_layout_is_stable() {
        let kind = RecordKind::Audit(AuditRecord {
            actor: "a".into(),
            action: "b".into(),
            detail: "c".into(),
        });
        let h = [7u8; 32];
        let bytes = canonical_bytes(3, 5, &kind, 0, &h);
        let mut expected = b"LJC1".to_vec();
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.push(2);
        for s in ["a", "b", "c"] {
            expected.extend_from_slice(&1u64.to_be_bytes());
            expected.extend_from_slice(s.as_bytes());
        }
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&h);
        assert_eq!(bytes, expected);
    }
}
