//! One IMAP session: the client's messages go to the IMAP server byte for byte, the
//! server's responses come back streamed, and levee reads just enough of both to keep
//! [`SessionState`] current.
//!
//! Both directions run in one task, with a bounded outbox each way and no blocking write:
//! a client pushing a large APPEND while the server streams a large FETCH must never
//! leave the two waiting on each other. A synchronizing literal is granted to the client
//! by levee itself, and sent upstream only after the server's own "+", which levee takes
//! out of the response stream ([`Out::GoAhead`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::ImapShared;
use super::caps::{self, ClientTls};
use super::continuity::{Listing, copyuid_source};
use super::framing::{ClientFramer, ClientMessage};
use super::modseq::{self, Shift};
use super::pump::{IDLE_READ, Pump, resize_for_next};
use super::registry::Following;
use super::responses::{Piece, ResponseScanner};
use super::search_return;
use super::seqmap::SeqMap;
use super::state::{SessionState, tagged_status};
use super::uidmap::Translation;
use super::view::View;
use crate::failover::controller::Backend;
use crate::failover::driver::Active;
use tokio::sync::watch;

/// Bytes waiting in either outbox before levee stops reading from the other side.
const OUTBOX_LIMIT: usize = 256 * 1024;
/// levee's own go-ahead to a client's IDLE that no server answered for it.
pub(super) const IDLE_GO_AHEAD: &[u8] = b"+ idling\r\n";
/// Longest a SELECT's OK waits for levee to know the mailbox at the primary.
pub(super) const CATALOGUE_WAIT: Duration = Duration::from_secs(5);

/// How a call to [`Session::serve`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Close,
    /// The client asked for STARTTLS and got OK: upgrade, then serve again.
    StartTls,
}

/// A piece of work for the upstream writer.
#[derive(Debug)]
pub(super) enum Out {
    Bytes(Vec<u8>, usize),
    /// Stop until the server's continuation request for the next literal.
    GoAhead,
}

/// The upstream half of a session; survives the client's STARTTLS upgrade.
#[derive(Debug)]
pub struct Session {
    pub(super) shared: Arc<ImapShared>,
    pub(super) tls: ClientTls,
    /// The connection to the server: `None` while the session hibernates.
    pub(super) up_read: Option<OwnedReadHalf>,
    pub(super) up_write: Option<OwnedWriteHalf>,
    pub(super) framer: ClientFramer,
    pub(super) scanner: ResponseScanner,
    pub(super) up_out: VecDeque<Out>,
    pub(super) up_out_bytes: usize,
    pub(super) state: SessionState,
    /// The greeting has been relayed (the first response head is the greeting).
    pub(super) greeted: bool,
    /// The backend this session's upstream connection belongs to.
    pub(super) backend: Backend,
    /// The active backend, when failover is configured.
    pub(super) active: Option<watch::Receiver<Active>>,
    /// The active backend changed while commands were in flight: move once they are done.
    pub(super) migrate_pending: bool,
    /// A planned move the new site did not take: not tried again before this.
    pub(super) migrate_not_before: Option<Instant>,
    /// After a migration during IDLE: the tag levee used for IDLE upstream, and the
    /// client's, whose completion the client must see.
    pub(super) idle_alias: Option<(String, String)>,
    /// levee follows the selected mailbox at the primary while this is held.
    pub(super) following: Option<Following>,
    /// On the replica: how the primary's UIDs the client knows map to the replica's.
    pub(super) translation: Option<Arc<Translation>>,
    /// On the replica, when its order of the selected mailbox's messages differs from the
    /// client's: the two numberings.
    pub(super) seqmap: Option<Box<SeqMap>>,
    /// levee's own listing of the mailbox just selected on the replica is under way (under
    /// this tag); the client's next commands wait for it.
    pub(super) listing: Option<Box<Listing>>,
    /// A SELECT went to the replica: its translation is needed before its responses.
    pub(super) translate_next: Option<String>,
    /// A SELECT completed at the primary: the client hears OK once levee knows the mailbox.
    pub(super) await_catalogue: bool,
    /// Read-only commands in flight, as the client sent them: sent again if the server
    /// goes away before answering.
    pub(super) replay: Vec<(String, ClientMessage)>,
    /// On the replica: the server's UIDs in the COPYUID of the command completing next.
    pub(super) copied: Option<Vec<u32>>,
    /// A SELECT with QRESYNC's values, waiting for its translation.
    pub(super) held_select: Option<ClientMessage>,
    /// The tag of a SEARCH whose RETURN options levee added ALL to: left out of its answer.
    pub(super) esearch_drop_all: Option<String>,
    /// What the client is shown of the server's mod-sequences, for this epoch.
    pub(super) modseq: Shift,
    /// While hibernating, and until it is open on a server again: the messages the
    /// client knows.
    pub(super) view: Option<Box<View>>,
}

impl Session {
    pub fn new(
        shared: Arc<ImapShared>,
        upstream: TcpStream,
        backend: Backend,
        encrypted: bool,
    ) -> Session {
        let config = &shared.config.imap;
        let tls = ClientTls {
            encrypted,
            available: shared.tls.is_some(),
            plaintext_auth: config.allow_plaintext_auth,
        };
        let framer = ClientFramer::new(config.max_line_length, config.max_literal);
        let (up_read, up_write) = upstream.into_split();
        let active = shared.failover.as_ref().map(|f| f.watch());
        let shared_shift = shared.modseq_shift();
        Session {
            shared,
            tls,
            up_read: Some(up_read),
            up_write: Some(up_write),
            framer,
            scanner: ResponseScanner::default(),
            up_out: VecDeque::new(),
            up_out_bytes: 0,
            state: SessionState::default(),
            greeted: false,
            backend,
            active,
            migrate_pending: false,
            migrate_not_before: None,
            idle_alias: None,
            following: None,
            translation: None,
            seqmap: None,
            listing: None,
            translate_next: None,
            await_catalogue: false,
            replay: Vec::new(),
            copied: None,
            held_select: None,
            esearch_drop_all: None,
            modseq: shared_shift,
            view: None,
        }
    }

    /// After a successful TLS handshake with the client.
    pub fn upgraded(&mut self) {
        self.tls.encrypted = true;
    }

    /// Runs the session until it ends or the client starts TLS.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&mut self, client: &mut S) -> Next {
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut pump = Pump {
            client_out: Vec::new(),
            client_sent: 0,
            closing: false,
            next: Next::Close,
        };
        self.run(&mut pump, &mut client_read, &mut client_write)
            .await;
        // Whatever is left for the client goes out before the session ends or upgrades.
        let pending = &pump.client_out[pump.client_sent..];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            client_write.write_all(pending).await?;
            client_write.flush().await
        })
        .await;
        pump.next
    }

    // The rare paths (moving the session, waiting for a catalogue or a translation) are
    // boxed: an idle session's task is only as large as its common path.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        pump: &mut Pump,
        client_read: &mut ReadHalf<&mut S>,
        client_write: &mut WriteHalf<&mut S>,
    ) {
        let mut from_client = Vec::with_capacity(IDLE_READ);
        let mut from_upstream = Vec::with_capacity(IDLE_READ);
        let shutdown = self.shared.shutdown.clone();
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        // One timer for the session, moved only when it fires early: resetting it on every
        // client message would cost a timer-wheel update per command. Before login the
        // deadline counts from the connection, whatever the client trickles in (slowloris);
        // after it, from the client's last bytes.
        let started = Instant::now();
        let mut last_read = started;
        let mut deadline = self.deadline(started, last_read);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
        // A session quiet this long in IDLE hibernates (see `super::hibernate`); like the
        // timer above, moved only when it fires.
        let hibernate_after = self.shared.config.imap.hibernate_after;
        let mut last_heard = started;
        let mut rest = std::pin::pin!(tokio::time::sleep_until(started + hibernate_after));
        // Shutting down: no new commands are read; the BYE waits until nothing is in flight.
        let mut stopping = false;
        while !pump.closing {
            if stopping && self.quiet() {
                pump.say(b"* BYE [UNAVAILABLE] levee is shutting down\r\n");
                pump.closing = true;
                break;
            }
            let up_writable = matches!(self.up_out.front(), Some(Out::Bytes(..)));
            let client_writable = pump.client_sent < pump.client_out.len();
            let read_client = self.up_out_bytes < OUTBOX_LIMIT && !stopping;
            let read_upstream = pump.client_out.len() - pump.client_sent < OUTBOX_LIMIT;
            tokio::select! {
                biased;
                _ = &mut cancelled, if !stopping => stopping = true,
                written = client_write.write(&pump.client_out[pump.client_sent..]), if client_writable => {
                    match written {
                        Ok(n) if n > 0 => pump.sent(n),
                        _ => return,
                    }
                }
                written = super::upstream::write_up(&mut self.up_write, super::upstream::front_bytes(&self.up_out)), if up_writable => {
                    match written {
                        Ok(n) if n > 0 => self.advance_up(n),
                        _ => Box::pin(self.upstream_lost(pump)).await,
                    }
                }
                read = super::upstream::read_up(&mut self.up_read, &mut from_upstream), if read_upstream => {
                    match read {
                        Ok(n) if n > 0 => {
                            last_heard = Instant::now();
                            self.scanner.push(&from_upstream);
                            resize_for_next(&mut from_upstream, n);
                            self.relay_responses(pump);
                            pump.write_now(client_write);
                            if let Some(mailbox) = self.translate_next.take() {
                                // A SELECT the client had pipelined behind levee's listing.
                                Box::pin(self.select_translated(&mailbox)).await;
                            }
                            if std::mem::take(&mut self.await_catalogue)
                                && let Some(following) = &self.following
                            {
                                Box::pin(following.ready(CATALOGUE_WAIT)).await;
                            }
                            if self.migrate_due() && self.can_migrate() {
                                Box::pin(self.migrate_to_active(pump)).await;
                            }
                        }
                        _ => {
                            from_upstream.clear();
                            Box::pin(self.upstream_lost(pump)).await;
                        }
                    }
                }
                active = next_active(&mut self.active) => {
                    // A new decision: a move that failed before is tried at once.
                    self.migrate_not_before = None;
                    if active.backend == self.backend {
                        self.modseq = Shift::at_epoch(active.epoch);
                    } else if self.can_migrate() {
                        Box::pin(self.migrate_to_active(pump)).await;
                    } else {
                        self.migrate_pending = true;
                    }
                }
                read = client_read.read_buf(&mut from_client), if read_client => {
                    match read {
                        Ok(n) if n > 0 => {
                            self.framer.push(&from_client);
                            resize_for_next(&mut from_client, n);
                            last_read = Instant::now();
                            deadline = self.deadline(started, last_read);
                            if deadline < timer.deadline() {
                                timer.as_mut().reset(deadline);
                            }
                            self.take_client_messages(pump);
                            if let Some(mailbox) = self.translate_next.take() {
                                Box::pin(self.select_translated(&mailbox)).await;
                            }
                            self.write_upstream_now();
                        }
                        _ => {
                            tracing::debug!("client went away");
                            return;
                        }
                    }
                }
                _ = rest.as_mut(), if !hibernate_after.is_zero() => {
                    let due = last_heard.max(last_read) + hibernate_after;
                    if Instant::now() < due {
                        rest.as_mut().reset(due);
                    } else {
                        if self.may_hibernate() {
                            Box::pin(self.hibernate(pump, client_read, client_write)).await;
                            last_read = Instant::now();
                        }
                        rest.as_mut().reset(Instant::now() + hibernate_after);
                    }
                }
                _ = timer.as_mut() => {
                    deadline = self.deadline(started, last_read);
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                    } else {
                        pump.say(b"* BYE Autologout; idle for too long\r\n");
                        pump.closing = true;
                    }
                }
            }
        }
    }

    /// Nothing of the client's is on its way: no command in flight but IDLE, nothing
    /// waiting to go upstream, no response half-relayed. A BYE now costs the client
    /// nothing but a new login.
    fn quiet(&self) -> bool {
        self.nothing_in_flight() && !self.scanner.mid_response()
    }

    /// When the session ends unless the client speaks: `login_timeout` after `started`
    /// until it has logged in, then `idle_timeout` after its `last_read`.
    fn deadline(&self, started: Instant, last_read: Instant) -> Instant {
        let config = &self.shared.config.imap;
        if self.state.logged_in() {
            last_read + config.idle_timeout
        } else {
            started + config.login_timeout
        }
    }

    /// Relays the server's responses, reading and rewriting their heads as needed.
    pub(super) fn relay_responses(&mut self, pump: &mut Pump) {
        while let Some(piece) = self.scanner.next_piece() {
            match piece {
                Piece::Raw(bytes) => pump.say(&bytes),
                Piece::Head(line) => self.response_head(pump, line),
            }
        }
        self.scanner.compact();
    }

    pub(super) fn response_head(&mut self, pump: &mut Pump, line: Vec<u8>) {
        if line.starts_with(b"+") {
            if matches!(self.up_out.front(), Some(Out::GoAhead)) {
                // The server's go-ahead for a literal levee already granted the client.
                self.up_out.pop_front();
                return;
            }
            self.state.continuation();
            pump.say(&line);
            return;
        }
        if !self.greeted {
            self.greeted = true;
        }
        if is_untagged_bye(&line) && self.state.logged_in() && !self.state.logging_out() {
            // The server is going away (Dovecot says so as it shuts down): the session
            // moves when the connection closes, and the client must not hear a goodbye
            // that is not its own.
            tracing::debug!("the mail server said BYE; kept from the client");
            return;
        }
        if let Some((upstream_tag, client_tag)) = self.idle_alias.clone()
            && let Some((tag, status)) = tagged_status(&line)
            && tag == upstream_tag
        {
            // The IDLE levee re-entered after a migration ends: under the client's tag.
            self.idle_alias = None;
            if let Some(finished) = self.state.completed(&client_tag, status) {
                self.finished(finished);
            }
            let mut renamed = client_tag.into_bytes();
            renamed.extend_from_slice(&line[upstream_tag.len()..]);
            pump.say(&renamed);
            return;
        }
        if self.listing.is_some() && self.listing_response(pump, &line) {
            return;
        }
        if line.len() > 10 && line[..10].eq_ignore_ascii_case(b"* ENABLED ") {
            self.state.enabled(&String::from_utf8_lossy(&line));
        } else if let Some((tag, status)) = tagged_status(&line) {
            let tag = tag.to_string();
            self.replay.retain(|(t, _)| *t != tag);
            if self.esearch_drop_all.as_ref() == Some(&tag) {
                self.esearch_drop_all = None;
            }
            if self.backend == Backend::Replica
                && let Some(source) = copyuid_source(&line)
            {
                self.copied = Some(source);
            }
            if let Some(finished) = self.state.completed(&tag, status) {
                self.finished(finished);
            }
            self.copied = None;
        } else if self.backend == Backend::Replica
            && let Some(source) = copyuid_source(&line)
        {
            self.copied = Some(source);
        }
        let line = self
            .translated_head(&line)
            .or_else(|| caps::rewrite_head(&line, self.tls))
            .unwrap_or(line);
        let line = match &self.esearch_drop_all {
            Some(tag) => search_return::without_all(&line, tag).unwrap_or(line),
            None => line,
        };
        match modseq::response_head(&line, self.modseq) {
            Some(shifted) => pump.say(&shifted),
            None => pump.say(&line),
        }
    }
}

/// Whether `line` is an untagged `BYE` response.
pub(super) fn is_untagged_bye(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"* BYE")
}

/// The next change of the active backend; never, without failover.
pub(super) async fn next_active(active: &mut Option<watch::Receiver<Active>>) -> Active {
    if let Some(rx) = active
        && rx.changed().await.is_ok()
    {
        return *rx.borrow_and_update();
    }
    std::future::pending().await
}

/// The tag a message starts with, when it looks like one.
pub(super) fn tag_of(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == b' ')?;
    let tag = std::str::from_utf8(&bytes[..end]).ok()?;
    (!tag.is_empty() && tag != "*" && tag != "+").then(|| tag.to_string())
}
