//! Moving a client's IMAP session to another server: when the server's connection breaks
//! or the active site changes, the session is opened again there (see [`super::rebuild`])
//! and the client's connection goes on as if nothing happened.

use std::time::Duration;

use super::framing::ClientMessage;
use super::pump::Pump;
use super::rebuild::rebuild;
use super::responses::ResponseScanner;
use super::session::Session;
use super::state::Status;
use crate::failover::controller::Backend;

/// Rebuilds tried after a session's server went away, each after the failover decision.
const RELOCATE_TRIES: usize = 3;
/// Shortest time between two tries of a planned move the new site did not take (each may
/// hold the session for `[imap] connect_timeout`).
const MOVE_RETRY: Duration = Duration::from_secs(5);

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

    /// A planned move waits and its time has come.
    pub(super) fn migrate_due(&self) -> bool {
        self.migrate_pending
            && self
                .migrate_not_before
                .is_none_or(|at| tokio::time::Instant::now() >= at)
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
        self.held_select = None;
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
    pub(super) async fn relocate(&mut self, pump: &mut Pump) {
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

    /// A planned move to `target`. When `target` does not take the session (its server
    /// hung, or died again right after a failback), the session keeps its own connection,
    /// which is whole, and tries again after [`MOVE_RETRY`] with its next response from
    /// the server, or at once when the active site changes; the failover controller is
    /// told, as for a lost connection.
    async fn migrate(&mut self, pump: &mut Pump, target: Backend) {
        let Err(err) = self.try_migrate(pump, target).await else {
            self.migrate_not_before = None;
            return;
        };
        if self.up_read.is_some() && self.up_write.is_some() {
            tracing::warn!(at = ?self.backend, to = ?target, %err, "could not move the IMAP session; it stays where it is and tries again");
            if let Some(failover) = &self.shared.failover {
                failover.upstream_error(target);
            }
            self.migrate_pending = true;
            self.migrate_not_before = Some(tokio::time::Instant::now() + MOVE_RETRY);
            return;
        }
        tracing::warn!(to = ?target, %err, "could not move the IMAP session");
        pump.say(b"* BYE [UNAVAILABLE] The mail server is not reachable; please reconnect\r\n");
        pump.closing = true;
    }

    /// Rebuilds the session on `target`; on failure nothing of the session has changed.
    pub(super) async fn try_migrate(
        &mut self,
        pump: &mut Pump,
        target: Backend,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        // A hibernating session opened again for its client is no move.
        let waking = self.view.is_some() && target == self.backend;
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
        } || self.view.is_some();
        let rebuilt = rebuild(addr, &self.state, limit, list).await;
        drop(turn);
        match rebuilt {
            Ok(rebuilt) => {
                let (read, write) = rebuilt.stream.into_split();
                self.up_read = Some(read);
                self.up_write = Some(write);
                self.scanner = ResponseScanner::default();
                self.backend = target;
                self.modseq = self.shared.modseq_shift();
                // A session back from hibernation: what the client knows is known exactly.
                let view = self.view.take();
                let listed = view.as_ref().and(rebuilt.listed.clone());
                self.arrive(pump, rebuilt.listed, view.is_none()).await;
                if let (Some(mut view), Some(listed)) = (view, listed) {
                    let now: crate::imap::view::Uids =
                        listed.into_iter().filter_map(|u| self.present(u)).collect();
                    for line in view.update(&now, u32::MAX) {
                        pump.say(line.as_bytes());
                    }
                }
                if let Some(exists) = rebuilt.exists {
                    pump.say(exists.as_bytes());
                }
                let unanswered = self.state.idle_awaiting_go_ahead().map(str::to_string);
                match (rebuilt.idle_tag, self.state.idling.clone()) {
                    (Some(ours), Some(theirs)) => self.idle_alias = Some((ours, theirs)),
                    (Some(ours), None) => {
                        // The client's IDLE reached the old server, which never said "+":
                        // the new one did, for the client.
                        if let Some(theirs) = unanswered {
                            self.state.continuation();
                            pump.say(super::session::IDLE_GO_AHEAD);
                            self.idle_alias = Some((ours, theirs));
                        }
                    }
                    (None, Some(theirs)) => {
                        // The client's DONE went to the old connection, which never
                        // answered it: the IDLE is over, and only its completion is due.
                        let _ = self.state.completed(&theirs, Status::Ok);
                        pump.say(format!("{theirs} OK IDLE completed\r\n").as_bytes());
                    }
                    _ => {}
                }
                if waking {
                    tracing::debug!(at = ?target, elapsed = ?started.elapsed(), "IMAP session woken");
                } else {
                    metrics::counter!(crate::metrics::IMAP_MIGRATIONS).increment(1);
                    tracing::info!(to = ?target, elapsed = ?started.elapsed(), "IMAP session moved");
                }
                self.scanner.push(&rebuilt.leftover);
                self.relay_responses(pump);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}
