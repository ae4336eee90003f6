//! Just enough of an IMAP client for the applier's duplicate check: greeting,
//! `AUTHENTICATE PLAIN` as a master user on behalf of a mailbox owner, `EXAMINE INBOX`,
//! `UID SEARCH` and `LOGOUT`.
//!
//! What the server says is decoded by [`super::imap_wire`] (no IO). Every command has one deadline
//! for all of its reads and a cap on the bytes they may bring. Commands are written by
//! hand: their arguments are constants, base64, a date or a search string quoted by
//! [`super::imap_wire::quoted`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::imap_wire::{Event, Responses, plain_response};

/// Most bytes one command may bring back, untagged responses included.
const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// Why the check could not be made. Always the standby's IMAP side (or the way to it).
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("standby IMAP {addr}: connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("standby IMAP {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("standby IMAP {addr}: i/o: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("standby IMAP {addr}: closed the connection")]
    Closed { addr: SocketAddr },
    #[error("standby IMAP {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
    #[error("standby IMAP {addr}: {command} refused: {text}")]
    Refused {
        addr: SocketAddr,
        command: &'static str,
        text: String,
    },
}

/// An open IMAP connection to the standby.
#[derive(Debug)]
pub(crate) struct Session {
    addr: SocketAddr,
    stream: TcpStream,
    responses: Responses,
    timeout: Duration,
    tags: u32,
}

impl Session {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Session, ImapError> {
        let deadline = Instant::now() + timeout;
        let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ImapError::Connect { addr, source }),
            Err(_) => {
                return Err(ImapError::Timeout {
                    addr,
                    after: timeout,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let mut session = Session {
            addr,
            stream,
            responses: Responses::new(),
            timeout,
            tags: 0,
        };
        let mut budget = MAX_COMMAND_BYTES;
        match session.event(deadline, &mut budget).await? {
            Event::Greeting { usable: true, .. } => Ok(session),
            Event::Greeting { text, .. } | Event::Bye(text) => Err(ImapError::Refused {
                addr,
                command: "the session",
                text,
            }),
            other => Err(session.protocol(format!("expected a greeting, got {other:?}"))),
        }
    }

    /// `AUTHENTICATE PLAIN` as `master` on behalf of `user`. The password is sent once,
    /// base64-encoded, and appears in no error.
    pub async fn login_as(
        &mut self,
        user: &str,
        master: &str,
        password: &str,
    ) -> Result<(), ImapError> {
        let tag = self.send("AUTHENTICATE PLAIN").await?;
        let (deadline, mut budget) = (Instant::now() + self.timeout, MAX_COMMAND_BYTES);
        loop {
            match self.event(deadline, &mut budget).await? {
                Event::Continue => break,
                Event::Tagged { tag: t, text, .. } if t == tag => {
                    return Err(self.refused("AUTHENTICATE PLAIN", text));
                }
                event => self.ignore(event)?,
            }
        }
        let mut line = plain_response(user, master, password);
        line.push_str("\r\n");
        self.write(line.as_bytes()).await?;
        self.finish(&tag, "AUTHENTICATE PLAIN", deadline, &mut budget, |_| {})
            .await
    }

    /// `EXAMINE INBOX` (read-only: the check never changes a flag).
    pub async fn examine_inbox(&mut self) -> Result<(), ImapError> {
        let tag = self.send("EXAMINE INBOX").await?;
        let (deadline, mut budget) = (Instant::now() + self.timeout, MAX_COMMAND_BYTES);
        self.finish(&tag, "EXAMINE", deadline, &mut budget, |_| {})
            .await
    }

    /// `UID SEARCH <criteria>`: the UIDs found.
    pub async fn uid_search(&mut self, criteria: &str) -> Result<Vec<u32>, ImapError> {
        let tag = self.send(&format!("UID SEARCH {criteria}")).await?;
        let (deadline, mut budget) = (Instant::now() + self.timeout, MAX_COMMAND_BYTES);
        let mut found = Vec::new();
        self.finish(&tag, "UID SEARCH", deadline, &mut budget, |uids| {
            found.extend_from_slice(uids)
        })
        .await?;
        Ok(found)
    }

    /// `LOGOUT`, briefly waited for; nothing depends on it.
    pub async fn logout(mut self) {
        let Ok(tag) = self.send("LOGOUT").await else {
            return;
        };
        let (deadline, mut budget) = (Instant::now() + Duration::from_secs(2), 64 * 1024);
        let _ = self
            .finish(&tag, "LOGOUT", deadline, &mut budget, |_| {})
            .await;
    }

    /// Writes `<tag> <command>` and returns the tag.
    async fn send(&mut self, command: &str) -> Result<String, ImapError> {
        self.tags += 1;
        let tag = format!("L{}", self.tags);
        self.write(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        Ok(tag)
    }

    /// Reads until the tagged end of `tag`, handing every SEARCH result to `on_search`.
    async fn finish(
        &mut self,
        tag: &str,
        command: &'static str,
        deadline: Instant,
        budget: &mut usize,
        mut on_search: impl FnMut(&[u32]),
    ) -> Result<(), ImapError> {
        loop {
            match self.event(deadline, budget).await? {
                Event::Tagged { tag: t, ok, text } if t == tag => {
                    return if ok {
                        Ok(())
                    } else {
                        Err(self.refused(command, text))
                    };
                }
                Event::Search(uids) => on_search(&uids),
                event => self.ignore(event)?,
            }
        }
    }

    /// Untagged chatter is fine; a BYE, an unexpected `+` or another tag is not.
    fn ignore(&self, event: Event) -> Result<(), ImapError> {
        match event {
            Event::Other => Ok(()),
            Event::Bye(text) => Err(self.refused("the session", text)),
            other => Err(self.protocol(format!("unexpected {other:?}"))),
        }
    }

    async fn event(&mut self, deadline: Instant, budget: &mut usize) -> Result<Event, ImapError> {
        let addr = self.addr;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(event) = self.responses.next() {
                return event.map_err(|detail| self.protocol(detail));
            }
            let read = match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(ImapError::Closed { addr }),
                Ok(Ok(n)) => n,
                Ok(Err(source)) => return Err(ImapError::Io { addr, source }),
                Err(_) => {
                    return Err(ImapError::Timeout {
                        addr,
                        after: self.timeout,
                    });
                }
            };
            *budget = budget
                .checked_sub(read)
                .ok_or_else(|| self.protocol("too much data for one command".into()))?;
            self.responses.push(&chunk[..read]);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ImapError> {
        let addr = self.addr;
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ImapError::Io { addr, source }),
            Err(_) => Err(ImapError::Timeout {
                addr,
                after: self.timeout,
            }),
        }
    }

    fn protocol(&self, detail: String) -> ImapError {
        ImapError::Protocol {
            addr: self.addr,
            detail,
        }
    }

    fn refused(&self, command: &'static str, text: String) -> ImapError {
        ImapError::Refused {
            addr: self.addr,
            command,
            text,
        }
    }
}
