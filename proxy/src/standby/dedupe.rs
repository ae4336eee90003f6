//! Exactly-once at the standby: the trace header that marks each applied copy, and the
//! check that finds a copy the applier delivered but did not live to record.
//!
//! Records are applied one at a time, and a record's final state is durable before the
//! next is tried. So the only record the standby can hold without the journal knowing is
//! the first one tried after a start, or one whose attempt failed after its final dot (the
//! standby may have delivered it and the reply was lost). Before delivering such a record,
//! the applier logs in to each recipient's mailbox as an IMAP master user and searches
//! INBOX for the record's trace id; recipients that have it are not delivered again.
//!
//! The check says "absent" only when the standby's IMAP server said so; any failure to ask
//! keeps the record waiting. What it cannot see: a copy filed away from INBOX (Sieve) or
//! deleted by its owner in the meantime, and a delivery the standby is still writing when
//! the check runs (the applier waits [`SETTLE`] after the uncertainty began for that).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use levee_config::Apply;

use super::imap_client::{ImapError, Session};
use super::imap_wire::quoted;

/// How long after an attempt whose outcome is unknown the check may run: the standby may
/// still be writing a message whose final dot it received just before the applier died.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The search looks at messages received from this long before the record was journaled:
/// the copy arrived after that, and the margin covers clock skew between levee and the
/// mail server (and the server's own time to deliver).
const CLOCK_MARGIN: Duration = Duration::from_secs(3600);

// The header and its id are shared with the SMTP path, whose copies carry the same id.
pub use crate::trace::{received_header, trace_id};

/// The `UID SEARCH` criteria that find the copy with `id` of a record journaled at
/// `time_ms`, looked for at `now_ms`: only messages the server received since then (with
/// a margin for the sites' clocks), `YOUNGER` (RFC 5032), which a server decides from its
/// index, before the header, which it must read each message for. An INBOX of tens of
/// thousands of messages is otherwise read whole, for many seconds.
pub fn search_criteria(id: &str, time_ms: u64, now_ms: u64) -> Option<String> {
    let age = Duration::from_millis(now_ms.saturating_sub(time_ms)) + CLOCK_MARGIN;
    Some(format!(
        "YOUNGER {} HEADER Received {}",
        age.as_secs(),
        quoted(id)?
    ))
}

/// A password read from a file; shown as `<redacted>` in every `Debug`.
#[derive(Clone)]
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the duplicate check cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("master_password_file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master_password_file {path}: the first line is empty")]
    Empty { path: PathBuf },
}

/// How to ask the standby whether a mailbox already holds a record's copy.
#[derive(Debug, Clone)]
pub struct Dedupe {
    imap: SocketAddr,
    master_user: String,
    password: Password,
    timeout: Duration,
}

impl Dedupe {
    /// The check as configured in `[apply]`; `None` when it is not (at-least-once).
    pub fn from_config(apply: &Apply, timeout: Duration) -> Result<Option<Dedupe>, DedupeError> {
        let (Some(imap), Some(master_user), Some(path)) = (
            apply.imap,
            apply.master_user.as_deref(),
            apply.master_password_file.as_deref(),
        ) else {
            return Ok(None);
        };
        Dedupe::for_server(imap, master_user, path, timeout).map(Some)
    }

    /// Master-user access to the IMAP server at `imap`, the password read from the first
    /// line of `password_file`.
    pub fn for_server(
        imap: SocketAddr,
        master_user: &str,
        password_file: &std::path::Path,
        timeout: Duration,
    ) -> Result<Dedupe, DedupeError> {
        let path = password_file.to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|source| DedupeError::Read {
            path: path.clone(),
            source,
        })?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            return Err(DedupeError::Empty { path });
        }
        Ok(Dedupe {
            imap,
            master_user: master_user.to_string(),
            password: Password(password),
            timeout,
        })
    }

    /// A session at the standby logged in to `user`'s mailboxes as the master user.
    pub async fn open_as(
        &self,
        user: &str,
    ) -> Result<crate::imap::conn::Conn, crate::imap::conn::ConnError> {
        use crate::imap::conn::{Conn, within};
        let response = super::imap_wire::plain_response(user, &self.master_user, &self.password.0);
        within(self.timeout, async {
            let mut conn = Conn::open(self.imap).await?;
            conn.run(crate::imap::identity::command(&format!(
                "AUTHENTICATE PLAIN {response}"
            )))
            .await?;
            Ok(conn)
        })
        .await
    }

    /// Whether `rcpt`'s INBOX at the standby holds a message found by `criteria` (see
    /// [`search_criteria`]). An error means "unknown", never "absent".
    pub async fn holds(&self, rcpt: &str, criteria: &str) -> Result<bool, ImapError> {
        let mut session = Session::connect(self.imap, self.timeout).await?;
        let found = async {
            session
                .login_as(rcpt, &self.master_user, &self.password.0)
                .await?;
            session.examine_inbox().await?;
            session.uid_search(criteria).await
        }
        .await;
        session.logout().await;
        Ok(!found?.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_looks_at_mail_received_since_the_record_with_an_hour_to_spare() {
        let criteria = search_criteria("L7.00ff", 1_700_000_000_000, 1_700_000_090_500).unwrap();
        assert_eq!(criteria, "YOUNGER 3690 HEADER Received \"L7.00ff\"");
        // A clock that went back still looks an hour around the record.
        let criteria = search_criteria("L1.00", 5_000, 1_000).unwrap();
        assert_eq!(criteria, "YOUNGER 3600 HEADER Received \"L1.00\"");
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2-secret\nignored\n").unwrap();
        let apply: Apply = toml_apply(&path);
        let dedupe = Dedupe::from_config(&apply, Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert_eq!(dedupe.password.0, "hunter2-secret");
        assert!(!format!("{dedupe:?}").contains("hunter2"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            Dedupe::from_config(&apply, Duration::from_secs(1)),
            Err(DedupeError::Empty { .. })
        ));
    }

    fn toml_apply(password_file: &std::path::Path) -> Apply {
        let mut apply: Apply = serde_json::from_value(serde_json::json!({
            "lmtp": "127.0.0.1:24",
            "local_domains": ["example.test"],
        }))
        .unwrap();
        apply.imap = Some("127.0.0.1:143".parse().unwrap());
        apply.master_user = Some("master".into());
        apply.master_password_file = Some(password_file.to_path_buf());
        apply
    }
}
