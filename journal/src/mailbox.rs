//! Mailbox changes made by IMAP clients at the primary, journaled so the replica's
//! mailboxes follow in state and not only in content: a message the user deleted must not
//! come back after a failover, a message saved to Sent must be there.
//!
//! A message is named by what stays true of it on both servers ([`MessageRef`]): the
//! levee trace id that every copy delivered through levee carries, else its Message-ID and
//! size. Its UID at the primary is kept for reference only: the replica's UIDs differ.

use serde::{Deserialize, Serialize};

/// One change to one user's mailboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    /// The IMAP login whose mailboxes changed.
    pub user: String,
    /// What changed.
    pub change: MailboxChange,
}

/// What changed. New variants are only ever added at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxChange {
    /// A message stored with APPEND; the record's body is the message, byte for byte.
    Append {
        mailbox: String,
        /// Flags given with the APPEND (`\Seen`, keywords), as the client wrote them.
        flags: Vec<String>,
        /// The INTERNALDATE given with the APPEND, as the client wrote it.
        internal_date: Option<String>,
        body: Vec<u8>,
    },
    /// Each message's flags are now exactly the ones listed with it.
    Flags {
        mailbox: String,
        messages: Vec<(MessageRef, Vec<String>)>,
    },
    /// The messages are gone from the mailbox.
    Expunge {
        mailbox: String,
        messages: Vec<MessageRef>,
    },
    /// The messages were copied from one mailbox to another (a MOVE is a copy followed by
    /// an expunge in the source).
    Copy {
        from: String,
        to: String,
        messages: Vec<MessageRef>,
    },
    /// A mailbox was created.
    Create { mailbox: String },
    /// A mailbox was deleted.
    Delete { mailbox: String },
    /// A mailbox was renamed.
    Rename { from: String, to: String },
}

/// A message, named so that its copy on another server can be found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageRef {
    /// Its UID at the primary (in the mailbox of the change).
    pub uid: u32,
    /// The levee trace id in its `Received:` header (`L<seq>.<chain prefix>`), when it
    /// came through levee's SMTP path.
    pub trace: Option<String>,
    /// Its Message-ID header, angle brackets included, if it has one.
    pub message_id: Option<String>,
    /// RFC822.SIZE at the primary.
    pub size: u64,
}

impl MailboxChange {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MailboxChange::Append { .. } => "append",
            MailboxChange::Flags { .. } => "flags",
            MailboxChange::Expunge { .. } => "expunge",
            MailboxChange::Copy { .. } => "copy",
            MailboxChange::Create { .. } => "create",
            MailboxChange::Delete { .. } => "delete",
            MailboxChange::Rename { .. } => "rename",
        }
    }
}

/// The chain's bytes for a mailbox record (see the crate docs): tag 0x03, the user, then
/// one byte for the change and its fields in declaration order.
pub(crate) fn canonical(out: &mut Vec<u8>, record: &MailboxRecord, tag: u8) {
    use crate::record::{put_len, put_opt, put_str};
    out.push(tag);
    put_str(out, &record.user);
    let put_strs = |out: &mut Vec<u8>, items: &[String]| {
        put_len(out, items.len());
        for item in items {
            put_str(out, item);
        }
    };
    let put_ref = |out: &mut Vec<u8>, m: &MessageRef| {
        out.extend_from_slice(&m.uid.to_be_bytes());
        put_opt(out, m.trace.as_deref());
        put_opt(out, m.message_id.as_deref());
        out.extend_from_slice(&m.size.to_be_bytes());
    };
    match &record.change {
        MailboxChange::Append {
            mailbox,
            flags,
            internal_date,
            body: _,
        } => {
            out.push(1);
            put_str(out, mailbox);
            put_strs(out, flags);
            put_opt(out, internal_date.as_deref());
        }
        MailboxChange::Flags { mailbox, messages } => {
            out.push(2);
            put_str(out, mailbox);
            put_len(out, messages.len());
            for (m, flags) in messages {
                put_ref(out, m);
                put_strs(out, flags);
            }
        }
        MailboxChange::Expunge { mailbox, messages } => {
            out.push(3);
            put_str(out, mailbox);
            put_len(out, messages.len());
            for m in messages {
                put_ref(out, m);
            }
        }
        MailboxChange::Copy { from, to, messages } => {
            out.push(4);
            put_str(out, from);
            put_str(out, to);
            put_len(out, messages.len());
            for m in messages {
                put_ref(out, m);
            }
        }
        MailboxChange::Create { mailbox } => {
            out.push(5);
            put_str(out, mailbox);
        }
        MailboxChange::Delete { mailbox } => {
            out.push(6);
            put_str(out, mailbox);
        }
        MailboxChange::Rename { from, to } => {
            out.push(7);
            put_str(out, from);
            put_str(out, to);
        }
    }
}
