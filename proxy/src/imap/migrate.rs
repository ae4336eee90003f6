//! Rebuilding a client's IMAP session on another server: greeting, LOGIN with the kept
//! credentials, ENABLE, SELECT or EXAMINE of the same mailbox, and IDLE again if the client
//! was idling. Commands are encoded with imap-codec (so a password needing a literal is
//! sent as one); the server's answers are read line by line with a bound.

use std::net::SocketAddr;
use std::time::Duration;

use imap_codec::CommandCodec;
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{Atom, LiteralMode};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::framing::ClientMessage;
use super::responses::ResponseScanner;
use super::seqmap::{LISTING, listed_uids};
use super::session::{Pump, Session};
use super::state::{SessionState, Status, tagged_status};
use crate::failover::controller::Backend;

const MAX_LINE: u64 = 64 * 1024;
/// Rebuilds tried after a session's server went away, each after the failover decision.
const RELOCATE_TRIES: usize = 3;
/// Untagged lines read while waiting for one completion before giving up.
const MAX_LINES: usize = 10_000;

/// A session re-established on a new server, ready for the client's next command.
#[derive(Debug)]
pub struct Rebuilt {
    pub stream: TcpStream,
    /// Bytes the server sent after the last line read (they belong to the stream).
    pub leftover: Vec<u8>,
    /// `* n EXISTS` from the new SELECT, to tell the client.
    pub exists: Option<String>,
    /// The tag levee used for IDLE on the new server (its completion goes to the client
    /// under the client's own IDLE tag).
    pub idle_tag: Option<String>,
    /// With `list`: the selected mailbox's UIDs right after the SELECT.
    pub listed: Option<Vec<u32>>,
}

/// Opens a session on `addr` that matches `state`; with `list`, also lists the selected
/// mailbox's UIDs (for [`super::seqmap::SeqMap`]).
pub async fn rebuild(
    addr: SocketAddr,
    state: &SessionState,
    limit: Duration,
    list: bool,
) -> Result<Rebuilt, String> {
    // The step under way, for the error when the time runs out.
    let step = std::sync::Mutex::new("connect");
    let at = |name| *step.lock().unwrap_or_else(|p| p.into_inner()) = name;
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream: BufReader::new(stream),
            next: 0,
        };
        at("greeting");
        let greeting = conn.line().await?;
        if !greeting.starts_with("* OK") {
            return Err(format!("greeting: {}", greeting.trim_end()));
        }
        at("LOGIN");
        if let Some(login) = &state.login {
            let body = CommandBody::login(login.user.as_str(), login.password.as_str())
                .map_err(|_| "the kept login cannot be encoded".to_string())?;
            conn.run(body).await.map_err(|e| format!("LOGIN: {e}"))?;
        }
        at("ENABLE");
        if !state.enabled.is_empty() {
            let capabilities: Vec<CapabilityEnable<'static>> = state
                .enabled
                .iter()
                .filter_map(|c| Atom::try_from(c.clone()).ok().map(CapabilityEnable::from))
                .collect();
            if let Ok(capabilities) = capabilities.try_into() {
                conn.run(CommandBody::Enable { capabilities })
                    .await
                    .map_err(|e| format!("ENABLE: {e}"))?;
            }
        }
        let mut exists = None;
        at("SELECT");
        if let Some(selected) = &state.selected {
            let body = if selected.read_only {
                CommandBody::Examine {
                    mailbox: selected.mailbox.clone(),
                    parameters: Vec::new(),
                }
            } else {
                CommandBody::Select {
                    mailbox: selected.mailbox.clone(),
                    parameters: Vec::new(),
                }
            };
            let untagged = conn.run(body).await.map_err(|e| format!("SELECT: {e}"))?;
            exists = untagged
                .into_iter()
                .find(|l| l.trim_end().to_ascii_uppercase().ends_with(" EXISTS"));
        }
        let mut listed = None;
        at("listing the mailbox");
        if list && state.selected.is_some() {
            // A server without ESEARCH says BAD: then the numbers go unmapped.
            if let Ok((tag, untagged)) = conn.run_line(LISTING).await {
                listed = untagged
                    .iter()
                    .find_map(|line| listed_uids(line.as_bytes(), &tag));
                // A message that arrived meanwhile: the client hears of it too.
                if let Some(line) = untagged
                    .iter()
                    .rev()
                    .find(|l| l.trim_end().to_ascii_uppercase().ends_with(" EXISTS"))
                {
                    exists = Some(line.clone());
                }
            }
        }
        let mut idle_tag = None;
        at("IDLE");
        // An IDLE the client has ended already is completed for it instead (see
        // `Session::try_migrate`).
        if state.idling.is_some() && !state.idle_done_sent {
            let tag = conn.send(CommandBody::Idle).await?;
            let mut lines = 0;
            loop {
                let line = conn.line().await?;
                if line.starts_with('+') {
                    break;
                }
                lines += 1;
                if lines > MAX_LINES {
                    return Err("IDLE: too many responses before the go-ahead".into());
                }
                if !line.starts_with("* ") {
                    return Err(format!("IDLE: {}", line.trim_end()));
                }
                // The server may report news before its go-ahead.
                if line.trim_end().to_ascii_uppercase().ends_with(" EXISTS") {
                    exists = Some(line);
                }
            }
            idle_tag = Some(tag);
        }
        let leftover = conn.stream.buffer().to_vec();
        Ok(Rebuilt {
            stream: conn.stream.into_inner(),
            leftover,
            exists,
            idle_tag,
            listed,
        })
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        let step = *step.lock().unwrap_or_else(|p| p.into_inner());
        Err(format!("no session on {addr} within {limit:?} (at {step})"))
    })
}

struct Conn {
    stream: BufReader<TcpStream>,
    next: u32,
}

impl Conn {
    async fn line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || !line.ends_with(b"\n") {
            return Err("connection closed".into());
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Sends a command (waiting for "+" before each synchronizing literal); returns its tag.
    async fn send(&mut self, body: CommandBody<'_>) -> Result<String, String> {
        self.next += 1;
        let tag = format!("levee{}", self.next);
        let command = Command::new(tag.as_str(), body).map_err(|e| format!("{e:?}"))?;
        for fragment in CommandCodec::default().encode(&command) {
            let (data, sync) = match fragment {
                Fragment::Line { data } => (data, false),
                Fragment::Literal { data, mode } => (data, mode == LiteralMode::Sync),
            };
            if sync {
                let go = self.line().await?;
                if !go.starts_with('+') {
                    return Err(go.trim_end().to_string());
                }
            }
            self.stream
                .get_mut()
                .write_all(&data)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok(tag)
    }

    /// Sends a command levee wrote as text; returns its tag and untagged lines.
    async fn run_line(&mut self, text: &str) -> Result<(String, Vec<String>), String> {
        self.next += 1;
        let tag = format!("levee{}", self.next);
        self.stream
            .get_mut()
            .write_all(format!("{tag} {text}\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let untagged = self.complete(&tag).await?;
        Ok((tag, untagged))
    }

    /// Sends a command and reads up to its completion; returns the untagged lines.
    async fn run(&mut self, body: CommandBody<'_>) -> Result<Vec<String>, String> {
        let tag = self.send(body).await?;
        self.complete(&tag).await
    }

    /// Reads up to the completion of `tag`; the untagged lines on the way.
    async fn complete(&mut self, tag: &str) -> Result<Vec<String>, String> {
        let mut untagged = Vec::new();
        for _ in 0..MAX_LINES {
            let line = self.line().await?;
            match tagged_status(line.as_bytes()) {
                Some((t, Status::Ok)) if t == tag => return Ok(untagged),
                Some((t, _)) if t == tag => return Err(line.trim_end().to_string()),
                _ => untagged.push(line),
            }
        }
        Err("too many responses".into())
    }
}

impl Session {
    /// Nothing is half-way between client and server: no command in flight but IDLE, no
    /// bytes waiting to go upstream, no message half-read from the client.
    pub(super) fn can_migrate(&self) -> bool {
        self.nothing_in_flight() && !self.framer.mid_message()
    }

    /// No command in flight but IDLE, no bytes waiting to go upstream, no listing.
    pub(super) fn nothing_in_flight(&self) -> bool {
        let idle = usize::from(self.state.idling.is_some());
        self.state.in_flight() <= idle && self.up_out.is_empty() && self.listing.is_none()
    }

    /// Moves the session to the active backend (planned: nothing in flight).
    pub(super) async fn migrate_to_active(&mut self, pump: &mut Pump) {
        self.migrate_pending = false;
        let target = self.shared.active_backend();
        if target != self.backend {
            self.migrate(pump, target).await;
        }
    }

    /// The connection to the server broke: commands in flight are answered NO (never
    /// applied twice), then the session moves to whichever backend is active once the
    /// failover controller has had time to decide, or to the same one again.
    pub(super) async fn upstream_lost(&mut self, pump: &mut Pump) {
        tracing::info!(backend = ?self.backend, "IMAP server connection lost");
        self.up_out.clear();
        self.up_out_bytes = 0;
        self.idle_alias = None;
        // The new connection's SELECT is listed as part of the move.
        self.listing = None;
        if self.scanner.mid_response() {
            // The client holds part of a response (inside a literal, say): nothing levee
            // could send now would be read as IMAP.
            pump.say(b"\r\n* BYE [UNAVAILABLE] The mail server went away in mid-response\r\n");
            pump.closing = true;
            return;
        }
        let abandoned = self.state.abandon_in_flight();
        // In the order the client sent them.
        let again: Vec<(String, ClientMessage)> = self
            .replay
            .drain(..)
            .filter(|(tag, _)| abandoned.contains(tag))
            .collect();
        for tag in abandoned {
            if !again.iter().any(|(t, _)| *t == tag) {
                pump.say(
                    format!("{tag} NO [UNAVAILABLE] The mail server went away during this command; please retry\r\n")
                        .as_bytes(),
                );
            }
        }
        self.relocate(pump).await;
        if pump.closing {
            for (tag, _) in again {
                pump.say(
                    format!("{tag} NO [UNAVAILABLE] The mail server went away\r\n").as_bytes(),
                );
            }
            return;
        }
        for (_, message) in again {
            self.client_message(pump, message);
        }
        // Commands that waited for a listing on the lost connection.
        self.take_client_messages(pump);
    }

    /// Moves to whichever backend is active once the failover controller has had time to
    /// decide, or to the same one again.
    async fn relocate(&mut self, pump: &mut Pump) {
        let Some(failover) = self.shared.failover.clone() else {
            pump.say(b"* BYE [UNAVAILABLE] The mail server closed the connection\r\n");
            pump.closing = true;
            return;
        };
        let settings = &self.shared.config.failover;
        let decide = ((settings.probe_interval + settings.probe_timeout) * (settings.failures + 1))
            .min(Duration::from_secs(15));
        // The server that failed may still count as active for a moment (its checks have
        // not all failed yet): a rebuild that fails then waits for the decision once more.
        let mut lost = self.backend;
        for attempt in 0..RELOCATE_TRIES {
            failover.upstream_error(lost);
            let mut watch = failover.watch();
            let _ = tokio::time::timeout(decide, async {
                while watch.borrow_and_update().backend == lost {
                    if watch.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            let target = failover.active().backend;
            match self.try_migrate(pump, target).await {
                Ok(()) => return,
                Err(err) if attempt + 1 < RELOCATE_TRIES => {
                    tracing::info!(to = ?target, %err, "could not move the IMAP session yet; waiting for the failover decision");
                    lost = target;
                }
                Err(err) => {
                    tracing::warn!(to = ?target, %err, "could not move the IMAP session");
                    pump.say(
                        b"* BYE [UNAVAILABLE] The mail server is not reachable; please reconnect\r\n",
                    );
                    pump.closing = true;
                }
            }
        }
    }

    async fn migrate(&mut self, pump: &mut Pump, target: Backend) {
        if let Err(err) = self.try_migrate(pump, target).await {
            tracing::warn!(to = ?target, %err, "could not move the IMAP session");
            pump.say(b"* BYE [UNAVAILABLE] The mail server is not reachable; please reconnect\r\n");
            pump.closing = true;
        }
    }

    /// Rebuilds the session on `target`; on failure nothing of the session has changed.
    async fn try_migrate(&mut self, pump: &mut Pump, target: Backend) -> Result<(), String> {
        let started = std::time::Instant::now();
        let Some(addr) = self.shared.imap_addr(target) else {
            return Err("no IMAP server to move this session to".into());
        };
        let limit = self.shared.config.imap.connect_timeout;
        // A failover moves every session at once: a bounded number rebuild at a time, and
        // each one's time limit starts with its turn (a server flooded with logins answers
        // none of them in time).
        let shared = self.shared.clone();
        let turn = shared.rebuilds.acquire().await;
        let list = match (target, self.state.selected_name()) {
            (Backend::Replica, _) => true,
            // Back at the primary: mail that arrived during the outage may be numbered
            // differently there than the client saw it.
            (Backend::Primary, Some(_)) => {
                self.translation.is_some() || self.shared.registry.any_home()
            }
            (Backend::Primary, None) => false,
        };
        let rebuilt = rebuild(addr, &self.state, limit, list).await;
        drop(turn);
        match rebuilt {
            Ok(rebuilt) => {
                let (read, write) = rebuilt.stream.into_split();
                self.up_read = read;
                self.up_write = write;
                self.scanner = ResponseScanner::default();
                self.backend = target;
                self.arrive(pump, rebuilt.listed).await;
                if let Some(exists) = rebuilt.exists {
                    pump.say(exists.as_bytes());
                }
                match (rebuilt.idle_tag, self.state.idling.clone()) {
                    (Some(ours), Some(theirs)) => self.idle_alias = Some((ours, theirs)),
                    (None, Some(theirs)) => {
                        // The client's DONE went to the old connection, which never
                        // answered it: the IDLE is over, and only its completion is due.
                        let _ = self.state.completed(&theirs, Status::Ok);
                        pump.say(format!("{theirs} OK IDLE completed\r\n").as_bytes());
                    }
                    _ => {}
                }
                metrics::counter!(crate::metrics::IMAP_MIGRATIONS).increment(1);
                tracing::info!(to = ?target, elapsed = ?started.elapsed(), "IMAP session moved");
                self.scanner.push(&rebuilt.leftover);
                self.relay_responses(pump);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}
