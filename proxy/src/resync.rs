//! Resync of the primary. While the replica is the active site its applier delivers every
//! local recipient's mail there, and the primary's mail server gets none of it. Each such
//! record goes on the journal's work list ([`Journal::resync_mark`]) as its delivery state
//! is written, and this worker hands the local recipients' copies to the primary's MTA
//! whenever it answers: in the background during the outage, so that the primary is
//! caught up by the time an admin fails back, and once more, bounded, inside the failback
//! (see `admin::switch`), which refuses to switch while the list is not empty.
//!
//! The copy carries the trace header that names the record. At the head of the list after
//! a start or an outage of the primary, where an unrecorded copy can be (a crash between
//! the primary's 250 and the list update, or a copy the primary's MTA queued before it
//! died and delivered when it came back), the worker first looks for that header in each
//! local recipient's INBOX at the primary (see [`crate::delivery::found`]) and copies only
//! where it is missing. After a pass that found the primary down, the next waits a moment
//! for such queued copies to land first.
//!
//! Changes clients made to their mailboxes at the replica meanwhile (journaled as
//! [`RecordKind::MailboxAtReplica`]) are on the same list, in the same order, and are made
//! at the primary's IMAP server as its master user (`upstream.primary.master_user`), the
//! way the replica's applier makes the primary's changes there; an APPEND looks first
//! whether its message is there already.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use levee_config::Config;
use levee_journal::{DeliveryState, Journal, JournalError, RecordKind, Seq};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::delivery::found;
use crate::delivery::unconfirmed::{self, Unconfirmed};
use crate::delivery::{Attempt, Due, deliver_to};
use crate::failover::controller::Backend;
use crate::smtp::envelope::is_local;
use crate::smtp::route::{BY_APPLIER, Routes};
use crate::standby::dedupe::Dedupe;
use crate::standby::mailbox;

/// How long a pass waits after the primary was found down: its MTA delivers what it had
/// queued before it died as it comes back, retrying a delivery that failed meanwhile after
/// its own backoff; a copy that comes later than this may arrive twice.
const BACK_SETTLE: Duration = Duration::from_secs(6);
/// Records taken per pass.
const BATCH: usize = 64;
/// Longest wait between two tries while the primary does not take mail.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The shortest time a search of the primary's mailboxes is given.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the list is looked at when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(5);
/// Shortest time between two looks for copies the primary's MTA may still deliver.
const WAITING_POLL: Duration = Duration::from_secs(1);

/// Master-user access to the primary's IMAP server, where `upstream.primary` configures it
/// (an unreadable password file is logged and leaves it out).
pub(crate) fn primary_master(config: &Config) -> Option<Dedupe> {
    let primary = &config.upstream.primary;
    let (Some(imap), Some(user), Some(file)) = (
        primary.imap,
        primary.master_user.as_deref(),
        primary.master_password_file.as_deref(),
    ) else {
        return None;
    };
    // A header search reads every message of an INBOX that has no index for it: a large
    // one on a busy server takes longer than a login.
    let timeout = config.imap.connect_timeout.max(SEARCH_TIMEOUT);
    match Dedupe::for_server(imap, user, file, timeout) {
        Ok(master) => Some(master),
        Err(err) => {
            tracing::error!(%err, "levee cannot log in to the primary's IMAP server as its master user");
            None
        }
    }
}

/// Writes a delivery state, first putting the record on the primary's work list when the
/// state says the replica's applier has its local recipients.
pub fn set_state(journal: &Journal, seq: Seq, state: &DeliveryState) -> Result<(), JournalError> {
    if state
        .last_reply
        .as_deref()
        .is_some_and(|reply| reply.contains(BY_APPLIER))
    {
        journal.resync_mark(seq)?;
    }
    journal.set_state(seq, state)
}

/// Where the resync stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResyncStatus {
    /// Messages the primary has yet to receive.
    pub pending: usize,
    /// Copies the primary accepted since levee started.
    pub delivered: u64,
    /// Copies the primary refused for good (logged with the reply; not retried).
    pub refused: u64,
    /// Why the last try failed, while the list is not empty.
    pub last_error: Option<String>,
}

/// A handle on the running worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Resync {
    journal: Journal,
    wake: Arc<Notify>,
    status: watch::Receiver<ResyncStatus>,
}

impl Resync {
    /// Starts the worker; it runs until `shutdown`.
    pub fn start(
        journal: Journal,
        config: Arc<Config>,
        routes: Routes,
        shutdown: CancellationToken,
    ) -> Resync {
        let wake = Arc::new(Notify::new());
        let pending = journal.resync_len();
        let (tx, status) = watch::channel(ResyncStatus {
            pending,
            ..ResyncStatus::default()
        });
        let master = primary_master(&config);
        let worker = Worker {
            journal: journal.clone(),
            config,
            routes,
            master,
            status: tx,
            primary_was_down: AtomicBool::new(false),
            unsure_left: AtomicUsize::new(BATCH),
        };
        tokio::spawn(worker.run(wake.clone(), shutdown));
        Resync {
            journal,
            wake,
            status,
        }
    }

    pub fn current(&self) -> ResyncStatus {
        self.status.borrow().clone()
    }

    /// Tries the primary now, and returns when it has every message or after `limit`.
    pub async fn wait_clear(&self, limit: Duration) -> bool {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(limit, async {
            while self.journal.resync_len() > 0 {
                status.borrow_and_update();
                self.wake.notify_one();
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok() && self.journal.resync_len() == 0
    }
}

/// What one entry of the list came to.
enum Copied {
    Delivered,
    /// Refused for good: logged, counted, not retried.
    Refused(String),
    /// Not now: the pass stops here (the list keeps its order).
    Retry(String),
    /// Nothing for the primary (no local recipient, not a message).
    Nothing,
    /// The primary's MTA may still deliver a copy of its own ([`unconfirmed`]): the entry
    /// stays, and so do the later changes of these users' mailboxes (they may concern it).
    Waiting(Vec<String>),
}

struct Worker {
    journal: Journal,
    config: Arc<Config>,
    routes: Routes,
    /// The primary's IMAP server as its master user, for mailbox changes.
    master: Option<Dedupe>,
    status: watch::Sender<ResyncStatus>,
    /// The last pass found the primary not taking mail (not even its first copy went): what its MTA queued before it
    /// died is delivered as it comes back, so the next pass gives that time to settle.
    primary_was_down: AtomicBool,
    /// How many more copies to look for at the primary before handing them over: the head
    /// of the list after levee starts is where a copy the previous process was handing
    /// over when it died can be, never marked unconfirmed (a header search costs a pass
    /// over the INBOX, so not every copy gets one). While levee runs, a copy the primary
    /// may hold without having confirmed it is marked ([`unconfirmed::mark`]) and looked
    /// for by itself: an outage of the primary alone does not make the head unsure (with
    /// large mailboxes, searching it made every failback wait for 64 searches).
    unsure_left: AtomicUsize,
}

impl Worker {
    async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.pass(&shutdown).await {
                Ok(true) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(false) if self.journal.resync_len() > 0 => {
                    // Only entries waiting for the primary's MTA: not looked at again at
                    // once, however often a failback asks.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(WAITING_POLL) => {}
                    }
                    POLL
                }
                Ok(false) => POLL,
                Err(why) => {
                    self.status.send_modify(|s| s.last_error = Some(why));
                    let wait = backoff;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => backoff = Duration::from_secs(1),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over the head of the list: `Ok(true)` when it took some off and there may
    /// be more, `Ok(false)` when the list is empty or waits only for copies the primary's
    /// MTA may deliver itself, `Err` when the primary did not take mail.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<bool, String> {
        // Entries that wait stay at the head; a batch reaches past them.
        let pending = self
            .journal
            .resync_pending(BATCH + self.journal.unconfirmed_len())
            .map_err(|e| e.to_string())?;
        let publish = |journal: &Journal, status: &watch::Sender<ResyncStatus>| {
            let left = journal.resync_len();
            status.send_modify(|s| {
                s.pending = left;
                if left == 0 {
                    s.last_error = None;
                }
            });
        };
        if pending.is_empty() {
            publish(&self.journal, &self.status);
            return Ok(false);
        }
        metrics::gauge!(crate::metrics::RESYNC_PENDING).set(self.journal.resync_len() as f64);
        if self.master.is_some() && self.primary_was_down.swap(false, Ordering::Relaxed) {
            tokio::time::sleep(BACK_SETTLE).await;
        }
        let (mut went, mut waiting) = (0usize, HashSet::new());
        for seq in pending {
            if shutdown.is_cancelled() {
                break;
            }
            match self.copy(seq, &waiting).await {
                Ok(Copied::Delivered) => {
                    self.status.send_modify(|s| s.delivered += 1);
                    metrics::counter!(crate::metrics::RESYNC_DELIVERED).increment(1);
                }
                Ok(Copied::Refused(why)) => {
                    tracing::error!(seq, %why, "the primary refused what the replica has; not retried");
                    self.status.send_modify(|s| s.refused += 1);
                }
                Ok(Copied::Nothing) => {}
                Ok(Copied::Waiting(users)) => {
                    waiting.extend(users);
                    continue;
                }
                Ok(Copied::Retry(why)) | Err(why) => {
                    if went == 0 {
                        // Not even the first copy went: the primary is down (or just back).
                        self.primary_was_down.store(true, Ordering::Relaxed);
                    }
                    publish(&self.journal, &self.status);
                    self.flush().await;
                    return Err(format!("record {seq}: {why}"));
                }
            }
            self.journal
                .resync_done(seq)
                .map_err(|e| format!("record {seq}: {e}"))?;
            unconfirmed::done(&self.journal, seq);
            went += 1;
        }
        self.flush().await;
        publish(&self.journal, &self.status);
        metrics::gauge!(crate::metrics::RESYNC_PENDING).set(self.journal.resync_len() as f64);
        Ok(went > 0)
    }

    /// Hands the local recipients' copy of `seq`, or the mailbox change it is, to the
    /// primary; a change of a user in `waiting` waits for that user's earlier message.
    async fn copy(&self, seq: Seq, waiting: &HashSet<String>) -> Result<Copied, String> {
        let record = self.journal.get(seq).map_err(|e| e.to_string())?;
        let Some(record) = record else {
            return Ok(Copied::Nothing);
        };
        let message = match record.kind {
            RecordKind::Message(message) => message,
            RecordKind::MailboxAtReplica(change) if waiting.contains(&change.user) => {
                return Ok(Copied::Waiting(Vec::new()));
            }
            RecordKind::MailboxAtReplica(change) => return Ok(self.change(seq, &change).await),
            _ => return Ok(Copied::Nothing),
        };
        let domains = &self.config.smtp.local_domains;
        let local: Vec<String> = (message.rcpt_to.iter())
            .filter(|rcpt| is_local(domains, rcpt))
            .cloned()
            .collect();
        if local.is_empty() {
            return Ok(Copied::Nothing);
        }
        let due = Due {
            seq,
            chain: record.chain,
            accepted_ms: record.time_ms,
            message,
        };
        let mut rcpts: Vec<&str> = local.iter().map(String::as_str).collect();
        let master = self.master.as_ref();
        let journal = &self.journal;
        match unconfirmed::settle(journal, &self.config, &self.routes, master, &due, &rcpts).await?
        {
            Unconfirmed::No => {}
            Unconfirmed::Arrived => return Ok(Copied::Delivered),
            Unconfirmed::Waiting(why) => {
                let mut status = self.status.borrow().clone();
                status.last_error = Some(format!("record {seq}: {why}"));
                self.status.send_replace(status);
                return Ok(Copied::Waiting(local));
            }
            Unconfirmed::Send(lacking) => {
                return Ok(self.send(&due, &lacking).await);
            }
        }
        // The primary's MTA may have taken this copy before it (or levee) died, and
        // delivered it since it came back.
        let unsure = self
            .unsure_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if let (true, Some(master)) = (unsure, &self.master) {
            rcpts = match found::lacking_known(master, &self.config, &due, &rcpts).await {
                Ok(lacking) => lacking,
                Err(why) if found::may_look_again(&self.config, &self.routes) => {
                    // Looked at again on the next pass (the head after it is unsure again).
                    self.unsure_left.fetch_add(1, Ordering::Relaxed);
                    return Ok(Copied::Retry(why));
                }
                Err(why) => {
                    tracing::warn!(seq, %why, "copying to the primary anyway; it may arrive twice");
                    rcpts
                }
            };
            if rcpts.is_empty() {
                return Ok(Copied::Delivered);
            }
        }
        Ok(self.send(&due, &rcpts).await)
    }

    /// Hands `due` to the primary's MTA for `rcpts`.
    async fn send(&self, due: &Due, rcpts: &[&str]) -> Copied {
        let seq = due.seq;
        match deliver_to(&self.config, &self.routes, Backend::Primary, due, rcpts).await {
            Attempt::Delivered(_) => {
                tracing::info!(
                    seq,
                    "message accepted while the replica was active copied to the primary"
                );
                Copied::Delivered
            }
            Attempt::Refused(reply) => Copied::Refused(reply.to_string()),
            Attempt::Unconfirmed(why) => {
                unconfirmed::mark(&self.journal, seq);
                Copied::Retry(why)
            }
            Attempt::Temporary(why) | Attempt::Unreachable(why) | Attempt::LookAgain(why) => {
                Copied::Retry(why)
            }
            Attempt::Applier | Attempt::Found => Copied::Nothing,
        }
    }

    /// Makes at the primary a change a client made at the replica.
    async fn change(&self, seq: Seq, change: &levee_journal::MailboxRecord) -> Copied {
        let what = change.change.name();
        if self.master.is_none() {
            return Copied::Refused(format!(
                "{what} by {} at the replica: upstream.primary.master_user is not set, so levee cannot make it at the primary",
                change.user
            ));
        }
        // Unsure every time: an earlier try may have landed before levee lost its answer.
        match mailbox::apply(self.master.as_ref(), change, true).await {
            mailbox::Outcome::Done(note) => {
                tracing::info!(seq, user = %change.user, change = what, %note, "mailbox change made at the replica copied to the primary");
                Copied::Delivered
            }
            mailbox::Outcome::Failed(note) => Copied::Refused(note),
            mailbox::Outcome::Retry(note) => Copied::Retry(note),
        }
    }

    /// Makes the list's removals durable (at worst a message is copied twice).
    async fn flush(&self) {
        if let Err(err) = self.journal.flush().await {
            tracing::warn!(%err, "cannot flush the primary's resync progress");
        }
    }
}
