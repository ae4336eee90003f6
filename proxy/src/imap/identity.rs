//! What names a message on both servers: the levee trace id its copy carries (every copy
//! delivered through levee has one, at the primary from the SMTP path and at the replica
//! from the applier), else its Message-ID and size (an APPENDed message is stored
//! byte-identical at both sites).

use std::num::NonZeroU32;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::FlagFetch;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Data, Response};
use levee_journal::MessageRef;

use super::conn::{Conn, ConnError};

/// The items levee fetches to know a message.
const ITEMS: &str = "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID RECEIVED)])";

/// What names one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    /// `L<seq>.<hex>` from a levee `Received:` header.
    pub trace: Option<String>,
    pub message_id: Option<String>,
    pub size: u64,
}

/// One message of a mailbox as levee last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub uid: u32,
    pub identity: Identity,
    /// Its flags, `\Recent` left out.
    pub flags: Vec<String>,
}

impl Identity {
    /// Reads the identity from a header block holding (at least) Message-ID and Received.
    pub fn from_header(size: u64, header: &[u8]) -> Identity {
        let mut identity = Identity {
            size,
            ..Identity::default()
        };
        for (name, value) in unfolded_fields(header) {
            if name.eq_ignore_ascii_case("message-id") && identity.message_id.is_none() {
                let value = value.trim();
                if !value.is_empty() {
                    identity.message_id = Some(value.to_string());
                }
            } else if name.eq_ignore_ascii_case("received") && identity.trace.is_none() {
                identity.trace = trace_in(&value);
            }
        }
        identity
    }

    /// The journal's name for the message whose UID at the primary is `uid`.
    pub fn to_ref(&self, uid: u32) -> MessageRef {
        MessageRef {
            uid,
            trace: self.trace.clone(),
            message_id: self.message_id.clone(),
            size: self.size,
        }
    }
}

/// The levee trace id in one Received value: `id L<digits>.<16 hex>`.
fn trace_in(value: &str) -> Option<String> {
    let mut words = value.split_whitespace();
    while let Some(word) = words.next() {
        if !word.eq_ignore_ascii_case("id") {
            continue;
        }
        let id = words.next()?.trim_end_matches(';');
        let (seq, hex) = id.strip_prefix('L')?.split_once('.')?;
        let valid = !seq.is_empty()
            && seq.bytes().all(|b| b.is_ascii_digit())
            && hex.len() == 16
            && hex.bytes().all(|b| b.is_ascii_hexdigit());
        return valid.then(|| id.to_string());
    }
    None
}

/// Header fields as (name, value) with continuation lines joined.
fn unfolded_fields(header: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// A command levee composes from numbers only.
pub fn command(text: &str) -> CommandBody<'static> {
    let line = format!("x {text}\r\n");
    match CommandCodec::default().decode(line.as_bytes()) {
        Ok((_, command)) => command.body.into_static(),
        Err(err) => unreachable!("levee's own command {text:?} does not parse: {err:?}"),
    }
}

/// EXAMINE of a mailbox named as a session named it.
pub fn examine(name: &str) -> Result<CommandBody<'static>, ConnError> {
    let mailbox = Mailbox::try_from(name.to_string())
        .map_err(|_| ConnError::Protocol(format!("mailbox name {name:?}")))?;
    Ok(CommandBody::Examine {
        mailbox,
        parameters: Vec::new(),
    })
}

/// A mailbox's name as levee keys it (`INBOX` in any case is INBOX).
pub fn mailbox_name(mailbox: &Mailbox<'_>) -> String {
    match mailbox {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(other) => String::from_utf8_lossy(other.as_ref()).into_owned(),
    }
}

/// Every message with a UID of `from` or above in the selected mailbox.
pub async fn fetch_known(conn: &mut Conn, from: u32) -> Result<Vec<Known>, ConnError> {
    let from = from.max(1);
    let responses = conn
        .run(command(&format!("UID FETCH {from}:* {ITEMS}")))
        .await?;
    let mut known: Vec<Known> = responses.into_iter().filter_map(known_from).collect();
    // `n:*` always names the last message, even below `n`.
    known.retain(|k| k.uid >= from);
    known.sort_by_key(|k| k.uid);
    known.dedup_by_key(|k| k.uid);
    Ok(known)
}

fn known_from(response: Response<'static>) -> Option<Known> {
    let Response::Data(Data::Fetch { items, .. }) = response else {
        return None;
    };
    let mut uid = None;
    let mut size = 0;
    let mut flags = Vec::new();
    let mut header = Vec::new();
    for item in items.into_iter() {
        match item {
            MessageDataItem::Uid(n) => uid = Some(n),
            MessageDataItem::Rfc822Size(n) => size = u64::from(n),
            MessageDataItem::Flags(list) => flags = flag_names(&list),
            MessageDataItem::BodyExt { data, .. } => {
                header = data
                    .into_option()
                    .map(|d| d.into_owned())
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    let uid: NonZeroU32 = uid?;
    Some(Known {
        uid: uid.get(),
        identity: Identity::from_header(size, &header),
        flags,
    })
}

/// Flags as IMAP writes them, without `\Recent` (which no client can set).
pub fn flag_names(list: &[FlagFetch<'_>]) -> Vec<String> {
    let mut names: Vec<String> = list
        .iter()
        .filter_map(|f| match f {
            FlagFetch::Flag(flag) => Some(flag.to_string()),
            FlagFetch::Recent => None,
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_levee_trace_id_and_message_id_name_a_message() {
        let header = b"Received: from client (127.0.0.1) by mx (levee) with ESMTP\r\n\
            \tid L42.00112233aabbccdd; Sun, 22 Nov 2026 10:00:00 +0000\r\n\
            Received: from mx by imap (Postfix) with ESMTP id 4XyzAB12;\r\n\
            Message-ID: <m1@example.org>\r\n\r\n";
        let identity = Identity::from_header(123, header);
        assert_eq!(identity.trace.as_deref(), Some("L42.00112233aabbccdd"));
        assert_eq!(identity.message_id.as_deref(), Some("<m1@example.org>"));
        assert_eq!(identity.size, 123);
    }

    #[test]
    fn other_received_ids_are_not_traces() {
        for value in [
            "from a by b (Postfix) with ESMTP id 4XyzAB12",
            "by b with LMTP id L42.0011",
            "by b with LMTP id L4x.00112233aabbccdd",
            "by b with LMTP id",
        ] {
            assert_eq!(trace_in(value), None, "{value}");
        }
        assert_eq!(
            trace_in("by b (levee apply) with LMTP id L7.0123456789abcdef; date").as_deref(),
            Some("L7.0123456789abcdef")
        );
    }

    #[test]
    fn composed_commands_parse() {
        assert!(matches!(
            command("UID FETCH 5:* (UID FLAGS)"),
            CommandBody::Fetch { uid: true, .. }
        ));
    }
}
