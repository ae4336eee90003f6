//! Opening a client's IMAP session again on another server: greeting, LOGIN with the kept
//! credentials, ENABLE, SELECT or EXAMINE of the same mailbox, the listing of its UIDs,
//! and IDLE again if the client was idling.
//!
//! After the greeting every command goes out in one write (RFC 9051 section 5.5 allows a
//! client to pipeline; the answers come in order), so a rebuild costs the server's work
//! and two round trips instead of one per command: a failover moves thousands of sessions
//! at once, and the time each holds its turn is what bounds how many move per second. A
//! command that needs a synchronizing literal (a password with a quote, say) cannot be
//! pipelined: then each command waits for the one before. Commands are encoded with
//! imap-codec; the server's answers are read line by line with a bound.

use std::net::SocketAddr;
use std::time::Duration;

use imap_codec::CommandCodec;
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{Atom, LiteralMode};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::seqmap::{LISTING, listed_uids};
use super::state::{SessionState, Status, tagged_status};

const MAX_LINE: u64 = 64 * 1024;
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

/// What each command of a rebuild is for: how its answer is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Login,
    Enable,
    Select,
    Listing,
    Idle,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Login => "LOGIN",
            Step::Enable => "ENABLE",
            Step::Select => "SELECT",
            Step::Listing => "listing the mailbox",
            Step::Idle => "IDLE",
        }
    }
}

/// One command of a rebuild, encoded.
struct Planned {
    step: Step,
    tag: String,
    fragments: Vec<(Vec<u8>, bool)>,
}

/// The commands that bring a fresh connection to `state`, tagged `levee1`, `levee2`, ...
fn plan(state: &SessionState, list: bool) -> Result<Vec<Planned>, String> {
    let mut bodies: Vec<(Step, Option<CommandBody<'_>>)> = Vec::new();
    if let Some(login) = &state.login {
        let body = CommandBody::login(login.user.as_str(), login.password.as_str())
            .map_err(|_| "the kept login cannot be encoded".to_string())?;
        bodies.push((Step::Login, Some(body)));
    }
    if !state.enabled.is_empty() {
        let capabilities: Vec<CapabilityEnable<'static>> = state
            .enabled
            .iter()
            .filter_map(|c| Atom::try_from(c.clone()).ok().map(CapabilityEnable::from))
            .collect();
        if let Ok(capabilities) = capabilities.try_into() {
            bodies.push((Step::Enable, Some(CommandBody::Enable { capabilities })));
        }
    }
    if let Some(selected) = &state.selected {
        let mailbox = selected.mailbox.clone();
        let body = if selected.read_only {
            CommandBody::Examine {
                mailbox,
                parameters: Vec::new(),
            }
        } else {
            CommandBody::Select {
                mailbox,
                parameters: Vec::new(),
            }
        };
        bodies.push((Step::Select, Some(body)));
        if list {
            bodies.push((Step::Listing, None));
        }
    }
    // An IDLE the client has ended already is completed for it instead (see
    // `Session::try_migrate`); one the lost server never said "+" to is entered here.
    if state.idle_to_resume() {
        bodies.push((Step::Idle, Some(CommandBody::Idle)));
    }
    let mut planned = Vec::with_capacity(bodies.len());
    for (n, (step, body)) in bodies.into_iter().enumerate() {
        let tag = format!("levee{}", n + 1);
        let fragments = match body {
            Some(body) => {
                let command = Command::new(tag.as_str(), body).map_err(|e| format!("{e:?}"))?;
                CommandCodec::default()
                    .encode(&command)
                    .map(|fragment| match fragment {
                        Fragment::Line { data } => (data, false),
                        Fragment::Literal { data, mode } => (data, mode == LiteralMode::Sync),
                    })
                    .collect()
            }
            None => vec![(format!("{tag} {LISTING}\r\n").into_bytes(), false)],
        };
        planned.push(Planned {
            step,
            tag,
            fragments,
        });
    }
    Ok(planned)
}

/// Opens a session on `addr` that matches `state`; with `list`, also lists the selected
/// mailbox's UIDs (for [`super::seqmap::SeqMap`]).
pub async fn rebuild(
    addr: SocketAddr,
    state: &SessionState,
    limit: Duration,
    list: bool,
) -> Result<Rebuilt, String> {
    let planned = plan(state, list)?;
    let pipelined = planned
        .iter()
        .all(|p| p.fragments.iter().all(|(_, sync)| !sync));
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
        };
        at("greeting");
        let greeting = conn.line().await?;
        if !greeting.starts_with("* OK") {
            return Err(format!("greeting: {}", greeting.trim_end()));
        }
        if pipelined {
            let batch: Vec<u8> = planned
                .iter()
                .flat_map(|p| {
                    p.fragments
                        .iter()
                        .flat_map(|(data, _)| data.iter().copied())
                })
                .collect();
            conn.write(&batch).await?;
        }
        let mut rebuilt = Answers::default();
        for command in &planned {
            at(command.step.name());
            if !pipelined {
                conn.send(&command.fragments).await?;
            }
            rebuilt.read(&mut conn, command).await?;
        }
        let leftover = conn.stream.buffer().to_vec();
        Ok(Rebuilt {
            stream: conn.stream.into_inner(),
            leftover,
            exists: rebuilt.exists,
            idle_tag: rebuilt.idle_tag,
            listed: rebuilt.listed,
        })
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        let step = *step.lock().unwrap_or_else(|p| p.into_inner());
        Err(format!("no session on {addr} within {limit:?} (at {step})"))
    })
}

/// What the answers of a rebuild's commands tell.
#[derive(Default)]
struct Answers {
    exists: Option<String>,
    idle_tag: Option<String>,
    listed: Option<Vec<u32>>,
}

impl Answers {
    /// Reads the answer to `command`.
    async fn read(&mut self, conn: &mut Conn, command: &Planned) -> Result<(), String> {
        let name = command.step.name();
        match command.step {
            Step::Login | Step::Enable => {
                conn.complete(&command.tag)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
            }
            Step::Select => {
                let untagged = conn
                    .complete(&command.tag)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                self.exists = untagged.into_iter().rev().find(|l| is_exists(l));
            }
            Step::Listing => {
                // A server without ESEARCH says BAD: then the numbers go unmapped.
                if let Ok(untagged) = conn.complete(&command.tag).await {
                    self.listed = untagged
                        .iter()
                        .find_map(|line| listed_uids(line.as_bytes(), &command.tag));
                    // A message that arrived meanwhile: the client hears of it too.
                    if let Some(line) = untagged.into_iter().rev().find(|l| is_exists(l)) {
                        self.exists = Some(line);
                    }
                }
            }
            Step::Idle => {
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
                    if is_exists(&line) {
                        self.exists = Some(line);
                    }
                }
                self.idle_tag = Some(command.tag.clone());
            }
        }
        Ok(())
    }
}

fn is_exists(line: &str) -> bool {
    line.trim_end().to_ascii_uppercase().ends_with(" EXISTS")
}

struct Conn {
    stream: BufReader<TcpStream>,
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

    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(data)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Sends one command, waiting for "+" before each synchronizing literal.
    async fn send(&mut self, fragments: &[(Vec<u8>, bool)]) -> Result<(), String> {
        for (data, sync) in fragments {
            if *sync {
                let go = self.line().await?;
                if !go.starts_with('+') {
                    return Err(go.trim_end().to_string());
                }
            }
            self.write(data).await?;
        }
        Ok(())
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

#[cfg(test)]
#[path = "rebuild_tests.rs"]
mod tests;
