//! Hibernation: a session that has sat in IDLE for `imap.hibernate_after` with nothing
//! else under way gives up its connection to the IMAP server. levee follows the selected
//! mailbox anyway (for UID continuity), so it tells the client itself what the server
//! would have told it in IDLE: EXISTS for new mail, EXPUNGE, and FETCH for changed flags,
//! numbered as the client knows its messages ([`View`]). The client's DONE is answered,
//! and a new IDLE entered, without the server; any other command opens the session on
//! the server again (as a migration does), and the messages the client knows are matched
//! with the server's list then.
//!
//! A hibernating session holds one socket instead of two, and nothing on the server: a
//! failover moves it by following its mailbox at the replica, without logging in there
//! until the client asks for something. Sessions that enabled CONDSTORE or QRESYNC do not
//! hibernate (their FETCH responses carry mod-sequences levee does not follow).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::framing::{ClientEvent, ClientMessage};
use super::modseq::Shift;
use super::pump::{IDLE_READ, Pump};
use super::responses::{Piece, ResponseScanner};
use super::seqmap::{LISTING, listed_uids};
use super::session::{CATALOGUE_WAIT, IDLE_GO_AHEAD, Session, is_untagged_bye, next_active};
use super::state::{Status, tagged_status};
use super::view::{Uids, View};
use crate::metrics as m;

/// levee's own tags on the connection it closes.
const LIST_TAG: &str = "levee.rest";
const LOGOUT_TAG: &str = "levee.bye";

impl Session {
    /// In IDLE with nothing else under way, on the active site, at a mailbox levee
    /// follows.
    pub(super) fn may_hibernate(&self) -> bool {
        let modseqs = self
            .state
            .enabled
            .iter()
            .any(|e| e.eq_ignore_ascii_case("CONDSTORE") || e.eq_ignore_ascii_case("QRESYNC"));
        self.state.idling.is_some()
            && !self.state.idle_done_sent
            && self.state.in_flight() == 1
            && self.up_out.is_empty()
            && !self.framer.mid_message()
            && !self.scanner.mid_response()
            && self.listing.is_none()
            && self.held_select.is_none()
            && !self.migrate_pending
            && self.following.is_some()
            && self.up_read.is_some()
            && !modseqs
            && self.backend == self.shared.active_backend()
    }

    /// Closes the connection to the server and serves the client's IDLE until it needs
    /// the server again, goes away, or levee shuts down.
    pub(super) async fn hibernate<R, W>(&mut self, pump: &mut Pump, read: &mut R, write: &mut W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut seen = self.news_version();
        match self.close_upstream(pump).await {
            Ok(view) => self.view = Some(Box::new(view)),
            Err(err) => {
                tracing::debug!(%err, "could not hibernate the IMAP session");
                self.up_read = None;
                self.up_write = None;
                Box::pin(self.upstream_lost(pump)).await;
                return;
            }
        }
        metrics::counter!(m::IMAP_HIBERNATIONS).increment(1);
        let _counted = Hibernating::counted();
        // What changed while the connection closed.
        self.tell_news(pump, &mut seen);
        self.hibernating(pump, read, write, seen).await;
    }

    /// Ends the server's IDLE, lists the mailbox's UIDs (the messages the client knows,
    /// once every response before them is relayed) and logs out.
    async fn close_upstream(&mut self, pump: &mut Pump) -> Result<View, String> {
        let idle_tag = match self.idle_alias.take() {
            Some((ours, _)) => ours,
            None => self.state.idling.clone().ok_or("not in IDLE")?,
        };
        let (Some(mut read), Some(mut write)) = (self.up_read.take(), self.up_write.take()) else {
            return Err("no server connection".into());
        };
        let commands = format!("DONE\r\n{LIST_TAG} {LISTING}\r\n{LOGOUT_TAG} LOGOUT\r\n");
        let limit = self.shared.config.imap.connect_timeout;
        let work = async {
            write
                .write_all(commands.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut uids = None;
            let mut buf = Vec::with_capacity(IDLE_READ);
            loop {
                buf.clear();
                let n = read
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return uids.ok_or_else(|| "closed before the list".to_string());
                }
                self.scanner.push(&buf);
                while let Some(piece) = self.scanner.next_piece() {
                    let line = match piece {
                        Piece::Raw(bytes) => {
                            pump.say(&bytes);
                            continue;
                        }
                        Piece::Head(line) => line,
                    };
                    if let Some(listed) = listed_uids(&line, LIST_TAG) {
                        uids = Some(listed);
                        continue;
                    }
                    match tagged_status(&line) {
                        Some((tag, _)) if tag == idle_tag || tag == LIST_TAG => continue,
                        Some((tag, _)) if tag == LOGOUT_TAG => {
                            return uids.ok_or_else(|| "no list".to_string());
                        }
                        _ if is_untagged_bye(&line) => continue,
                        // News the server told before its answers: the client's too.
                        _ => self.response_head(pump, line),
                    }
                }
                self.scanner.compact();
            }
        };
        let uids = tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err("the server did not answer in time".into()))?;
        self.scanner = ResponseScanner::default();
        Ok(View::new(
            uids.into_iter().filter_map(|u| self.present(u)).collect(),
        ))
    }

    /// The UID the client knows for the current server's `uid`.
    pub(super) fn present(&self, uid: u32) -> Option<u32> {
        match &self.translation {
            Some(t) => t.presented(uid),
            None => Some(uid),
        }
    }

    fn news_version(&self) -> u64 {
        self.following
            .as_ref()
            .map_or(0, |f| f.followed().flag_log().version())
    }

    /// Tells the client what changed in its mailbox as levee's follower saw it: the
    /// messages gone and come, and the flag changes since version `seen`.
    fn tell_news(&mut self, pump: &mut Pump, seen: &mut u64) {
        let Some(followed) = self.following.as_ref().map(|f| f.followed().clone()) else {
            return;
        };
        if !*followed.ready.borrow() {
            // Not filled yet: an empty list is no news.
            return;
        }
        let (now, known_below, all_flags) = {
            let catalogue = followed.catalogue();
            let now: Uids = catalogue
                .messages
                .keys()
                .filter_map(|&u| self.present(u))
                .collect();
            let known_below = match &self.translation {
                Some(t) => t.presented_uidnext(catalogue.uidnext),
                None => catalogue.uidnext,
            };
            let flags = followed.flag_log().since(*seen);
            // A session too far behind hears every message's flags.
            let all_flags = match flags {
                Some(_) => None,
                None => Some(
                    catalogue
                        .messages
                        .values()
                        .map(|k| (k.uid, k.flags.clone()))
                        .collect::<Vec<_>>(),
                ),
            };
            (now, known_below, all_flags.or(flags))
        };
        *seen = followed.flag_log().version();
        let Some(view) = self.view.as_deref_mut() else {
            return;
        };
        for line in view.update(&now, known_below) {
            pump.say(line.as_bytes());
        }
        let Some(view) = self.view.as_deref() else {
            return;
        };
        for (uid, flags) in all_flags.unwrap_or_default() {
            if let Some(n) = self.present(uid).and_then(|p| view.seq_of(p)) {
                pump.say(format!("* {n} FETCH (FLAGS ({}))\r\n", flags.join(" ")).as_bytes());
            }
        }
    }

    /// Serves the client while the session hibernates.
    async fn hibernating<R, W>(&mut self, pump: &mut Pump, read: &mut R, write: &mut W, seen: u64)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut seen = seen;
        let mut news = self
            .following
            .as_ref()
            .map(|f| f.followed().news.subscribe());
        let shutdown = self.shared.shutdown.clone();
        let idle_timeout = self.shared.config.imap.idle_timeout;
        let mut last_read = Instant::now();
        let mut buf = Vec::with_capacity(IDLE_READ);
        while !pump.closing {
            pump.write_now(write);
            let unsent = pump.client_sent < pump.client_out.len();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    pump.say(b"* BYE [UNAVAILABLE] levee is shutting down\r\n");
                    pump.closing = true;
                }
                written = write.write(&pump.client_out[pump.client_sent..]), if unsent => {
                    match written {
                        Ok(n) if n > 0 => pump.sent(n),
                        _ => pump.closing = true,
                    }
                }
                active = next_active(&mut self.active) => {
                    if active.backend == self.backend {
                        self.modseq = Shift::at_epoch(active.epoch);
                    } else {
                        Box::pin(self.move_hibernating(pump)).await;
                        news = self.following.as_ref().map(|f| f.followed().news.subscribe());
                        seen = self.news_version();
                    }
                }
                _ = changed(&mut news) => self.tell_news(pump, &mut seen),
                got = read.read_buf(&mut buf) => {
                    match got {
                        Ok(n) if n > 0 => {
                            self.framer.push(&buf);
                            buf.clear();
                            last_read = Instant::now();
                            if let Some(event) = self.answer_locally(pump) {
                                Box::pin(self.wake(pump, event)).await;
                                return;
                            }
                        }
                        _ => pump.closing = true,
                    }
                }
                _ = tokio::time::sleep_until(last_read + idle_timeout) => {
                    pump.say(b"* BYE Autologout; idle for too long\r\n");
                    pump.closing = true;
                }
            }
        }
    }

    /// Answers the client's DONE and IDLE without the server; the first thing it sent
    /// that needs the server is returned.
    fn answer_locally(&mut self, pump: &mut Pump) -> Option<ClientEvent> {
        loop {
            let event = self.framer.next_event()?;
            let ClientEvent::Message(message) = &event else {
                return Some(event);
            };
            if let Some(tag) = self.state.idling.clone() {
                if !message.bytes.eq_ignore_ascii_case(b"DONE\r\n") {
                    return Some(event);
                }
                let _ = self.state.completed(&tag, Status::Ok);
                pump.say(format!("{tag} OK Idle completed.\r\n").as_bytes());
            } else if let Some(command) = idle_command(message) {
                self.state.command_sent(&command);
                self.state.continuation();
                pump.say(IDLE_GO_AHEAD);
            } else {
                return Some(event);
            }
        }
    }

    /// Opens the session on the active server again, for the client's `event` (and what
    /// it sent after it).
    async fn wake(&mut self, pump: &mut Pump, event: ClientEvent) {
        metrics::counter!(m::IMAP_WAKES).increment(1);
        let target = self.shared.active_backend();
        if let Err(err) = self.try_migrate(pump, target).await {
            // The server went away while the session hibernated, and the failover
            // controller has not decided yet: as for a session whose connection broke.
            tracing::info!(at = ?target, %err, "could not wake the IMAP session yet; waiting for the failover decision");
            self.relocate(pump).await;
        }
        if pump.closing {
            return;
        }
        self.client_event(pump, event);
        self.take_client_messages(pump);
        self.write_upstream_now();
    }

    /// The active site changed: the session follows its mailbox there, and the client
    /// hears of the messages the new site lacks or has beyond what it knew.
    async fn move_hibernating(&mut self, pump: &mut Pump) {
        let target = self.shared.active_backend();
        let Some(name) = self.state.selected_name() else {
            return;
        };
        if target == self.backend {
            return;
        }
        self.backend = target;
        self.modseq = self.shared.modseq_shift();
        self.translation = None;
        self.seqmap = None;
        self.follow_selected();
        if let Some(following) = &self.following {
            following.ready(CATALOGUE_WAIT).await;
        }
        self.translation = self.translation_for(&name).await;
        // The flags are the primary's as journaled; only the messages are compared.
        let mut seen = self.news_version();
        self.tell_news(pump, &mut seen);
        // As after a migration: the count at the new site (the same, most often).
        if let Some(view) = &self.view {
            pump.say(format!("* {} EXISTS\r\n", view.len()).as_bytes());
        }
        metrics::counter!(m::IMAP_MIGRATIONS).increment(1);
        tracing::debug!(to = ?target, "hibernating IMAP session moved");
    }
}

/// One session in `levee_imap_sessions_hibernating`, for as long as it lives (a session
/// task dropped at shutdown included).
struct Hibernating;

impl Hibernating {
    fn counted() -> Hibernating {
        metrics::gauge!(m::IMAP_HIBERNATING).increment(1.0);
        Hibernating
    }
}

impl Drop for Hibernating {
    fn drop(&mut self) {
        metrics::gauge!(m::IMAP_HIBERNATING).decrement(1.0);
    }
}

/// The next change levee's follower saw; never, without a follower.
async fn changed(news: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(news) = news
        && news.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// The client's message when it is an IDLE command.
fn idle_command(message: &ClientMessage) -> Option<imap_codec::imap_types::command::Command<'_>> {
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    match CommandCodec::default().decode(&message.bytes) {
        Ok((b"", command)) if matches!(command.body, CommandBody::Idle) => Some(command),
        _ => None,
    }
}
