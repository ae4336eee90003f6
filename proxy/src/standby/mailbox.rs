//! Applying a mailbox change made at the primary ([`MailboxRecord`]) to the standby: logged
//! in to the user's mailboxes as the configured IMAP master user, each message found by the
//! name its copy carries at both sites (the levee trace id, else Message-ID and size).
//!
//! Every change is made so that doing it twice leaves the same state: flags are set, not
//! added; an expunge of what is gone is nothing; CREATE of what exists and DELETE or RENAME
//! of what is gone count as done. APPEND and COPY add messages, so when the applier is not
//! sure an earlier attempt failed (after a restart, or after an error), it looks first.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::mailbox::Mailbox;
use levee_journal::{MailboxChange, MailboxRecord, MessageRef};

use super::dedupe::Dedupe;
use super::imap_wire::quoted;
use crate::imap::conn::{Conn, ConnError};
use crate::imap::identity::command;

/// How applying one change ended.
#[derive(Debug)]
pub enum Outcome {
    Done(String),
    /// The standby refused it for good.
    Failed(String),
    /// Try again later (the standby could not be reached or asked).
    Retry(String),
}

/// Applies `record` at the standby. `unsure`: an earlier attempt may have landed.
pub async fn apply(dedupe: Option<&Dedupe>, record: &MailboxRecord, unsure: bool) -> Outcome {
    let Some(dedupe) = dedupe else {
        return Outcome::Failed(
            "mailbox changes need [apply] imap, master_user and master_password_file".into(),
        );
    };
    let mut conn = match dedupe.open_as(&record.user).await {
        Ok(conn) => conn,
        Err(err) => return Outcome::Retry(format!("standby IMAP: {err}")),
    };
    let result = change(&mut conn, &record.change, unsure).await;
    let _ = conn.run(command("LOGOUT")).await;
    match result {
        Ok(note) => Outcome::Done(note),
        Err(ConnError::Refused(text)) => Outcome::Failed(format!("standby refused: {text}")),
        Err(err) => Outcome::Retry(format!("standby IMAP: {err}")),
    }
}

async fn change(
    conn: &mut Conn,
    change: &MailboxChange,
    unsure: bool,
) -> Result<String, ConnError> {
    match change {
        MailboxChange::Create { mailbox } => {
            let done = benign(conn.run(body("CREATE", &[mailbox])?).await, "ALREADYEXISTS")?;
            Ok(done.unwrap_or("created").into())
        }
        MailboxChange::Delete { mailbox } => {
            let done = benign(conn.run(body("DELETE", &[mailbox])?).await, "NONEXISTENT")?;
            Ok(done.unwrap_or("deleted").into())
        }
        MailboxChange::Rename { from, to } => {
            let done = benign(conn.run(body("RENAME", &[from, to])?).await, "NONEXISTENT")?;
            Ok(done.unwrap_or("renamed").into())
        }
        MailboxChange::Append {
            mailbox,
            flags,
            internal_date,
            body: message,
        } => {
            if unsure && let Some(id) = message_id_of(message) {
                let probe = MessageRef {
                    message_id: Some(id),
                    size: message.len() as u64,
                    ..MessageRef::default()
                };
                if select(conn, mailbox, true).await? && !find(conn, &probe).await?.is_empty() {
                    return Ok("already at the standby".into());
                }
            }
            let append = append(mailbox, flags, internal_date.as_deref(), message)?;
            match conn.run(append.clone()).await {
                Err(ConnError::Refused(text)) if text.contains("TRYCREATE") => {
                    conn.run(body("CREATE", &[mailbox])?).await?;
                    conn.run(append).await?;
                }
                other => {
                    other?;
                }
            }
            Ok("appended".into())
        }
        MailboxChange::Flags { mailbox, messages } => {
            if !select(conn, mailbox, false).await? {
                return Ok("mailbox gone at the standby".into());
            }
            let mut set = 0;
            for (message, flags) in messages {
                let uids = find(conn, message).await?;
                if uids.is_empty() {
                    continue;
                }
                let list: Vec<&str> = flags
                    .iter()
                    .map(String::as_str)
                    .filter(|f| valid_flag(f))
                    .collect();
                conn.run(command(&format!(
                    "UID STORE {} FLAGS.SILENT ({})",
                    join(&uids),
                    list.join(" ")
                )))
                .await?;
                set += uids.len();
            }
            Ok(format!("flags set on {set} messages"))
        }
        MailboxChange::Expunge { mailbox, messages } => {
            if !select(conn, mailbox, false).await? {
                return Ok("mailbox gone at the standby".into());
            }
            let mut uids = Vec::new();
            for message in messages {
                uids.extend(find(conn, message).await?);
            }
            if uids.is_empty() {
                return Ok("nothing to expunge".into());
            }
            let set = join(&uids);
            conn.run(command(&format!(
                "UID STORE {set} +FLAGS.SILENT (\\Deleted)"
            )))
            .await?;
            conn.run(command(&format!("UID EXPUNGE {set}"))).await?;
            Ok(format!("expunged {} messages", uids.len()))
        }
        MailboxChange::Copy { from, to, messages } => {
            let mut wanted: Vec<&MessageRef> = messages.iter().collect();
            if unsure && select(conn, to, true).await? {
                let mut missing = Vec::new();
                for message in wanted {
                    if find(conn, message).await?.is_empty() {
                        missing.push(message);
                    }
                }
                wanted = missing;
            }
            if wanted.is_empty() || !select(conn, from, false).await? {
                return Ok("nothing to copy".into());
            }
            let mut uids = Vec::new();
            for message in wanted {
                uids.extend(find(conn, message).await?);
            }
            if uids.is_empty() {
                return Ok("nothing to copy".into());
            }
            let copy = body(&format!("UID COPY {}", join(&uids)), &[to])?;
            match conn.run(copy.clone()).await {
                Err(ConnError::Refused(text)) if text.contains("TRYCREATE") => {
                    conn.run(body("CREATE", &[to])?).await?;
                    conn.run(copy).await?;
                }
                other => {
                    other?;
                }
            }
            Ok(format!("copied {} messages", uids.len()))
        }
    }
}

/// SELECT (or EXAMINE) `mailbox`; `false` when it does not exist at the standby.
async fn select(conn: &mut Conn, mailbox: &str, read_only: bool) -> Result<bool, ConnError> {
    let name = Mailbox::try_from(mailbox.to_string())
        .map_err(|_| ConnError::Refused(format!("mailbox name {mailbox:?}")))?;
    let body = if read_only {
        CommandBody::Examine {
            mailbox: name,
            parameters: Vec::new(),
        }
    } else {
        CommandBody::Select {
            mailbox: name,
            parameters: Vec::new(),
        }
    };
    Ok(benign(conn.run(body).await, "NONEXISTENT")?.is_none())
}

/// The UIDs of the selected mailbox's copies of `message`.
async fn find(conn: &mut Conn, message: &MessageRef) -> Result<Vec<u32>, ConnError> {
    let criteria = match (&message.trace, &message.message_id) {
        (Some(trace), _) => match quoted(trace) {
            Some(trace) => format!("HEADER Received {trace}"),
            None => return Ok(Vec::new()),
        },
        (None, Some(id)) => match quoted(id) {
            Some(id) => format!(
                "HEADER Message-ID {id} LARGER {} SMALLER {}",
                message.size.saturating_sub(1),
                message.size + 1
            ),
            None => return Ok(Vec::new()),
        },
        (None, None) => return Ok(Vec::new()),
    };
    let responses = conn.run(command(&format!("UID SEARCH {criteria}"))).await?;
    Ok(responses
        .into_iter()
        .filter_map(|r| match r {
            imap_codec::imap_types::response::Response::Data(
                imap_codec::imap_types::response::Data::Search(uids, ..),
            ) => Some(uids),
            _ => None,
        })
        .flatten()
        .map(|n| n.get())
        .collect())
}

/// A tagged NO whose text names `code` is success (`Some` with a note).
fn benign(
    result: Result<Vec<imap_codec::imap_types::response::Response<'static>>, ConnError>,
    code: &str,
) -> Result<Option<&'static str>, ConnError> {
    match result {
        Ok(_) => Ok(None),
        Err(ConnError::Refused(text)) if text.contains(code) => {
            Ok(Some("already so at the standby"))
        }
        Err(err) => Err(err),
    }
}

/// `head "a" "b"`: a command with quoted mailbox names.
fn body(head: &str, mailboxes: &[&String]) -> Result<CommandBody<'static>, ConnError> {
    let mut text = head.to_string();
    for mailbox in mailboxes {
        let quoted = quoted(mailbox).ok_or_else(|| {
            ConnError::Refused(format!("mailbox name {mailbox:?} cannot be quoted"))
        })?;
        text.push(' ');
        text.push_str(&quoted);
    }
    parse(text.as_bytes())
}

fn append(
    mailbox: &str,
    flags: &[String],
    date: Option<&str>,
    message: &[u8],
) -> Result<CommandBody<'static>, ConnError> {
    let name = quoted(mailbox)
        .ok_or_else(|| ConnError::Refused(format!("mailbox name {mailbox:?} cannot be quoted")))?;
    let flags: Vec<&str> = flags
        .iter()
        .map(String::as_str)
        .filter(|f| valid_flag(f) && !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    let mut text = format!("APPEND {name} ({})", flags.join(" ")).into_bytes();
    if let Some(date) = date.and_then(quoted) {
        text.extend_from_slice(format!(" {date}").as_bytes());
    }
    text.extend_from_slice(format!(" {{{}+}}\r\n", message.len()).as_bytes());
    text.extend_from_slice(message);
    parse(&text)
}

fn parse(text: &[u8]) -> Result<CommandBody<'static>, ConnError> {
    let mut line = b"x ".to_vec();
    line.extend_from_slice(text);
    line.extend_from_slice(b"\r\n");
    match CommandCodec::default().decode(&line) {
        Ok((_, command)) => Ok(command.body.into_static()),
        Err(err) => Err(ConnError::Refused(format!(
            "cannot form the command: {err:?}"
        ))),
    }
}

/// A flag as IMAP writes one (`\Seen`, `$Forwarded`, `Junk`).
fn valid_flag(flag: &str) -> bool {
    let atom = flag.strip_prefix('\\').unwrap_or(flag);
    !atom.is_empty()
        && atom
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

fn join(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The Message-ID header of a message, angle brackets included.
fn message_id_of(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    parsed.message_id().map(|id| format!("<{id}>"))
}
