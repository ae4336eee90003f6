//! What levee remembers of an IMAP session, in memory only: enough to log in again
//! elsewhere and put the client back where it was (the login, ENABLEd extensions, the
//! selected mailbox and its mode, IDLE). Pure bookkeeping, fed with decoded commands and
//! response heads; no IO.

use std::collections::HashMap;

use base64::Engine;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::mailbox::Mailbox;

use super::changes::{Change, change_of};

/// A login that worked. Kept only in memory, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The selected mailbox and how it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub mailbox: Mailbox<'static>,
    pub read_only: bool,
}

/// A command sent upstream and not yet completed, by what its completion changes.
#[derive(Debug, Clone)]
enum Pending {
    Login(Option<Credentials>),
    Select(Selected),
    Deselect,
    Enable,
    Idle,
    /// A command that changes mailboxes (see [`super::changes`]).
    Change(Box<Change>),
    UidSearch,
    Logout,
    Other,
}

/// What a completed command means beyond the session's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// A SELECT or EXAMINE succeeded: `selected` is the new mailbox.
    Selected,
    /// No mailbox is selected any more.
    Deselected,
    /// The server accepted a change to mailboxes.
    Changed(Change),
    Other,
}

/// The tracked state of one session.
#[derive(Debug, Default)]
pub struct SessionState {
    pub login: Option<Credentials>,
    pub selected: Option<Selected>,
    /// Extensions the server confirmed in `* ENABLED`.
    pub enabled: Vec<String>,
    /// The IDLE command in progress (its tag), once the server said "+".
    pub idling: Option<String>,
    /// The client ended that IDLE (its DONE went upstream, or waits to): on a new
    /// connection levee completes the IDLE for it rather than entering it again.
    pub idle_done_sent: bool,
    pending: HashMap<String, Pending>,
    /// AUTHENTICATE PLAIN sent without an initial response: the client's next line is it.
    auth_plain: Option<String>,
    /// The server asked for the next line of an AUTHENTICATE exchange.
    pub auth_continues: bool,
    idle_requested: Option<String>,
}

/// The result of a tagged response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

impl SessionState {
    /// Records a command on its way upstream.
    pub fn command_sent(&mut self, command: &Command<'_>) {
        let tag = command.tag.inner().to_string();
        let pending = match &command.body {
            CommandBody::Login { username, password } => Pending::Login(Some(Credentials {
                user: text(username.as_ref()),
                password: text(password.declassify().as_ref()),
            })),
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let creds = match (mechanism, initial_response) {
                    (AuthMechanism::Plain, Some(response)) => plain(response.declassify()),
                    (AuthMechanism::Plain, None) => {
                        self.auth_plain = Some(tag.clone());
                        None
                    }
                    _ => None,
                };
                Pending::Login(creds)
            }
            CommandBody::Select { mailbox, .. } => Pending::Select(Selected {
                mailbox: mailbox.clone().into_static(),
                read_only: false,
            }),
            CommandBody::Examine { mailbox, .. } => Pending::Select(Selected {
                mailbox: mailbox.clone().into_static(),
                read_only: true,
            }),
            CommandBody::Close | CommandBody::Unselect => Pending::Deselect,
            CommandBody::Logout => Pending::Logout,
            CommandBody::Enable { .. } => Pending::Enable,
            CommandBody::Idle => {
                self.idle_requested = Some(tag.clone());
                Pending::Idle
            }
            CommandBody::Search { uid: true, .. }
            | CommandBody::Sort { uid: true, .. }
            | CommandBody::Thread { uid: true, .. } => Pending::UidSearch,
            _ => match change_of(command) {
                Some(change) => Pending::Change(Box::new(change)),
                None => Pending::Other,
            },
        };
        self.pending.insert(tag, pending);
    }

    /// A command levee could not decode went upstream as it was.
    pub fn opaque_sent(&mut self, tag: Option<String>) {
        if let Some(tag) = tag {
            self.pending.insert(tag, Pending::Other);
        }
    }

    /// The client's line inside an AUTHENTICATE exchange.
    pub fn auth_line_sent(&mut self, line: &[u8]) {
        self.auth_continues = false;
        let Some(tag) = self.auth_plain.take() else {
            return;
        };
        let trimmed = line.trim_ascii_end();
        let creds = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .ok()
            .and_then(|raw| plain(&raw));
        if let Some(Pending::Login(slot)) = self.pending.get_mut(&tag) {
            *slot = creds;
        }
    }

    /// The server sent a continuation request ("+ ...").
    pub fn continuation(&mut self) {
        if let Some(tag) = self.idle_requested.take() {
            self.idling = Some(tag);
            self.idle_done_sent = false;
        } else if self
            .pending
            .values()
            .any(|p| matches!(p, Pending::Login(_)))
        {
            self.auth_continues = true;
        }
    }

    /// The IDLE the client sent that no server has said "+" to yet (its tag).
    pub fn idle_awaiting_go_ahead(&self) -> Option<&str> {
        self.idle_requested.as_deref()
    }

    /// Whether a new connection must enter IDLE for the client: it is idling and has not
    /// ended it, or it asked to and the lost connection never said "+".
    pub fn idle_to_resume(&self) -> bool {
        (self.idling.is_some() && !self.idle_done_sent) || self.idle_requested.is_some()
    }

    /// An untagged `* ENABLED ...`.
    pub fn enabled(&mut self, line: &str) {
        for word in line.split_ascii_whitespace().skip(2) {
            if !self.enabled.iter().any(|e| e.eq_ignore_ascii_case(word)) {
                self.enabled.push(word.to_string());
            }
        }
    }

    /// A tagged completion of a command the client sent (`None` for any other tag).
    pub fn completed(&mut self, tag: &str, status: Status) -> Option<Finished> {
        let pending = self.pending.remove(tag)?;
        Some(match (pending, status) {
            (Pending::Login(creds), Status::Ok) => {
                self.login = creds;
                Finished::Other
            }
            (Pending::Login(_), _) => {
                self.auth_plain = None;
                self.auth_continues = false;
                Finished::Other
            }
            (Pending::Select(selected), Status::Ok) => {
                self.selected = Some(selected);
                Finished::Selected
            }
            // RFC 9051 6.3.2: a failed SELECT leaves no mailbox selected.
            (Pending::Select(_), Status::No) | (Pending::Deselect, Status::Ok) => {
                self.selected = None;
                Finished::Deselected
            }
            (Pending::Idle, _) => {
                self.idling = None;
                self.idle_requested = None;
                self.idle_done_sent = false;
                Finished::Other
            }
            (Pending::Change(change), Status::Ok) => Finished::Changed(*change),
            _ => Finished::Other,
        })
    }

    /// A UID SEARCH, SORT or THREAD is in flight (so `* SEARCH`, `* SORT` and `* THREAD`
    /// list UIDs, not sequence numbers).
    pub fn uid_search_in_flight(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::UidSearch))
    }

    /// The selected mailbox's name as levee keys it.
    pub fn selected_name(&self) -> Option<String> {
        self.selected
            .as_ref()
            .map(|s| super::identity::mailbox_name(&s.mailbox))
    }

    /// Forgets the commands in flight on a connection that was lost, but IDLE (which is
    /// re-entered on the new one); returns their tags, to be told the command failed.
    pub fn abandon_in_flight(&mut self) -> Vec<String> {
        let idle = self.idling.clone().or_else(|| self.idle_requested.clone());
        let tags: Vec<String> = self
            .pending
            .keys()
            .filter(|tag| Some(*tag) != idle.as_ref())
            .cloned()
            .collect();
        for tag in &tags {
            if let Some(Pending::Login(_)) = self.pending.remove(tag) {
                self.auth_plain = None;
                self.auth_continues = false;
            }
        }
        tags
    }

    /// Whether a login has succeeded in this session.
    pub fn logged_in(&self) -> bool {
        self.login.is_some()
    }

    /// Whether the client asked to log out (the server's BYE is then the client's due).
    pub fn logging_out(&self) -> bool {
        self.pending.values().any(|p| matches!(p, Pending::Logout))
    }

    /// Commands sent upstream and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// `authzid NUL authcid NUL password` (RFC 4616).
fn plain(raw: &[u8]) -> Option<Credentials> {
    let mut parts = raw.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some(Credentials {
        user: text(user),
        password: text(password),
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The status word of a tagged response head (`a1 OK ...`), with its tag.
pub fn tagged_status(line: &[u8]) -> Option<(&str, Status)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.splitn(3, ' ');
    let tag = words.next()?;
    if tag == "*" || tag == "+" || tag.is_empty() {
        return None;
    }
    let status = match words.next()?.trim_end().to_ascii_uppercase().as_str() {
        "OK" => Status::Ok,
        "NO" => Status::No,
        "BAD" => Status::Bad,
        _ => return None,
    };
    Some((tag, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;

    fn send(state: &mut SessionState, line: &[u8]) {
        let (_, command) = CommandCodec::default().decode(line).unwrap();
        state.command_sent(&command);
    }

    #[test]
    fn login_counts_only_once_the_server_says_ok() {
        let mut state = SessionState::default();
        send(&mut state, b"a1 LOGIN alice wrong\r\n");
        assert!(state.completed("a1", Status::No).is_some());
        assert!(!state.logged_in());
        send(&mut state, b"a2 LOGIN alice \"s3cret pw\"\r\n");
        assert!(state.completed("a2", Status::Ok).is_some());
        let login = state.login.clone().unwrap();
        assert_eq!(
            (login.user.as_str(), login.password.as_str()),
            ("alice", "s3cret pw")
        );
        assert!(
            !format!("{state:?}").contains("s3cret"),
            "password in Debug"
        );
    }

    #[test]
    fn a_logout_in_flight_is_known() {
        let mut state = SessionState::default();
        send(&mut state, b"n1 NOOP\r\n");
        assert!(!state.logging_out());
        send(&mut state, b"z9 LOGOUT\r\n");
        assert!(state.logging_out());
        state.completed("z9", Status::Ok);
        assert!(!state.logging_out());
    }

    #[test]
    fn authenticate_plain_with_and_without_initial_response() {
        let mut state = SessionState::default();
        // "\0alice\0pw" in base64.
        send(&mut state, b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n");
        state.completed("a", Status::Ok);
        assert_eq!(state.login.as_ref().unwrap().password, "pw");

        let mut state = SessionState::default();
        send(&mut state, b"b AUTHENTICATE PLAIN\r\n");
        state.continuation();
        assert!(state.auth_continues);
        state.auth_line_sent(b"AGJvYgBwdzI=\r\n");
        state.completed("b", Status::Ok);
        assert_eq!(state.login.as_ref().unwrap().user, "bob");
    }

    #[test]
    fn select_examine_close_and_idle_are_followed() {
        let mut state = SessionState::default();
        send(&mut state, b"s1 SELECT INBOX\r\n");
        state.completed("s1", Status::Ok);
        assert!(!state.selected.as_ref().unwrap().read_only);
        send(&mut state, b"s2 EXAMINE Archive\r\n");
        state.completed("s2", Status::Ok);
        assert!(state.selected.as_ref().unwrap().read_only);
        send(&mut state, b"s3 SELECT Missing\r\n");
        state.completed("s3", Status::No);
        assert!(state.selected.is_none(), "a failed SELECT deselects");

        send(&mut state, b"i IDLE\r\n");
        assert!(state.idling.is_none());
        assert_eq!(state.idle_awaiting_go_ahead(), Some("i"));
        assert!(
            state.idle_to_resume(),
            "an IDLE not yet answered is entered again"
        );
        state.continuation();
        assert_eq!(state.idle_awaiting_go_ahead(), None);
        assert!(state.idle_to_resume());
        state.idle_done_sent = true;
        assert!(
            !state.idle_to_resume(),
            "an IDLE the client ended is completed"
        );
        assert_eq!(state.idling.as_deref(), Some("i"));
        state.completed("i", Status::Ok);
        assert!(state.idling.is_none());

        state.enabled("* ENABLED CONDSTORE UTF8=ACCEPT");
        assert_eq!(state.enabled, ["CONDSTORE", "UTF8=ACCEPT"]);
    }

    #[test]
    fn tagged_status_words() {
        assert_eq!(tagged_status(b"a1 OK done\r\n"), Some(("a1", Status::Ok)));
        assert_eq!(
            tagged_status(b"x NO [TRYCREATE] no\r\n"),
            Some(("x", Status::No))
        );
        assert_eq!(tagged_status(b"* OK still here\r\n"), None);
        assert_eq!(tagged_status(b"+ idling\r\n"), None);
        assert_eq!(tagged_status(b"a1 BAD\r\n"), Some(("a1", Status::Bad)));
    }
}
