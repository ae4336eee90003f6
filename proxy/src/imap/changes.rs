//! Client commands that change mailboxes, read from the command on its way upstream and
//! acted on once the server says OK: APPEND, COPY/MOVE and CREATE/DELETE/RENAME become
//! journal records here; flag STOREs and expunges are seen by the mailbox follower
//! ([`super::tracker`]), which the session only nudges.

use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::sequence::SequenceSet;

use super::identity::mailbox_name;

/// A mutating command waiting for its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Append {
        mailbox: String,
        flags: Vec<String>,
        internal_date: Option<String>,
        body: Vec<u8>,
    },
    /// COPY or MOVE (the source expunge of a MOVE reaches the journal through the follower).
    Copy {
        to: String,
        set: SequenceSet,
        uid: bool,
    },
    Create(String),
    Delete(String),
    Rename(String, String),
    /// STORE, EXPUNGE, CLOSE: the selected mailbox changed; look at it now.
    Touch,
}

/// The change `command` makes if the server accepts it.
pub fn change_of(command: &Command<'_>) -> Option<Change> {
    Some(match &command.body {
        CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } => Change::Append {
            mailbox: mailbox_name(mailbox),
            flags: flags.iter().map(ToString::to_string).collect(),
            internal_date: date
                .as_ref()
                .map(|d| d.as_ref().format("%d-%b-%Y %H:%M:%S %z").to_string()),
            body: match message {
                LiteralOrLiteral8::Literal(literal) => literal.data().to_vec(),
                LiteralOrLiteral8::Literal8(literal) => literal.data.to_vec(),
            },
        },
        CommandBody::Copy {
            sequence_set,
            mailbox,
            uid,
        }
        | CommandBody::Move {
            sequence_set,
            mailbox,
            uid,
        } => Change::Copy {
            to: mailbox_name(mailbox),
            set: sequence_set.clone(),
            uid: *uid,
        },
        CommandBody::Create { mailbox } => Change::Create(mailbox_name(mailbox)),
        CommandBody::Delete { mailbox } => Change::Delete(mailbox_name(mailbox)),
        CommandBody::Rename { from, to } => Change::Rename(mailbox_name(from), mailbox_name(to)),
        CommandBody::Store { .. }
        | CommandBody::Expunge
        | CommandBody::ExpungeUid { .. }
        | CommandBody::Close => Change::Touch,
        _ => return None,
    })
}

/// Whether sending `command` again cannot change anything a client would notice twice:
/// such a command, in flight when the server went away, is sent again on the new one.
/// (FETCH of a body sets \Seen, which setting twice leaves the same.)
pub fn replayable(command: &Command<'_>) -> bool {
    matches!(
        command.body,
        CommandBody::Capability
            | CommandBody::Noop
            | CommandBody::Check
            | CommandBody::Fetch { .. }
            | CommandBody::Search { .. }
            | CommandBody::Status { .. }
            | CommandBody::List { .. }
            | CommandBody::Lsub { .. }
            | CommandBody::Namespace
            | CommandBody::Select { .. }
            | CommandBody::Examine { .. }
            | CommandBody::Id { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;

    fn change(line: &[u8]) -> Option<Change> {
        let (_, command) = CommandCodec::default().decode(line).unwrap();
        change_of(&command)
    }

    #[test]
    fn append_keeps_the_message_flags_and_date() {
        let got =
            change(b"a APPEND Sent (\\Seen) \"22-Nov-2026 10:00:00 +0100\" {5+}\r\nhello\r\n");
        assert_eq!(
            got,
            Some(Change::Append {
                mailbox: "Sent".into(),
                flags: vec!["\\Seen".into()],
                internal_date: Some("22-Nov-2026 10:00:00 +0100".into()),
                body: b"hello".to_vec(),
            })
        );
    }

    #[test]
    fn mailbox_commands_and_touches() {
        assert_eq!(
            change(b"a RENAME Old New\r\n"),
            Some(Change::Rename("Old".into(), "New".into()))
        );
        assert_eq!(
            change(b"a CREATE inbox\r\n"),
            Some(Change::Create("INBOX".into()))
        );
        assert!(matches!(
            change(b"a UID MOVE 1:3 Trash\r\n"),
            Some(Change::Copy { uid: true, .. })
        ));
        assert_eq!(
            change(b"a STORE 1 +FLAGS (\\Deleted)\r\n"),
            Some(Change::Touch)
        );
        assert_eq!(change(b"a NOOP\r\n"), None);
    }

    #[test]
    fn only_commands_without_effects_are_sent_twice() {
        let replay = |line: &[u8]| replayable(&CommandCodec::default().decode(line).unwrap().1);
        assert!(replay(b"a UID FETCH 1:* (FLAGS)\r\n"));
        assert!(replay(b"a STATUS INBOX (MESSAGES)\r\n"));
        assert!(!replay(b"a UID STORE 1 +FLAGS (\\Seen)\r\n"));
        assert!(!replay(b"a APPEND Sent {1+}\r\nx\r\n"));
        assert!(!replay(b"a EXPUNGE\r\n"));
    }
}
