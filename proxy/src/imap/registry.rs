//! The mailboxes levee follows at the primary, shared by every session of a user: what
//! levee knows of each ([`Catalogue`], kept after the sessions end so that a client coming
//! back after a failover still keeps its UIDs), the journal writer for mailbox changes, and
//! the UID translations built for sessions on the replica.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use levee_journal::{
    DeliveryState, DeliveryStatus, Journal, MailboxChange, MailboxRecord, NewRecord, RecordKind,
};
use tokio::sync::{Notify, OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::conn::{self, Conn};
use super::known_at_replica::{self, Keeper, KnownAtReplica};
use super::state::Credentials;
use super::tracker;
use super::uidmap::{Catalogue, Translation};
use super::view::FlagLog;
use crate::failover::controller::Backend;
use crate::failover::driver::Failover;
use crate::smtp::now_ms;

/// A user's mailbox.
pub type Key = (String, String);

/// A translation built at most once (`None` inside: continuity is impossible, or there is
/// nothing to translate).
pub(super) type TranslationCell = OnceCell<Option<Arc<Translation>>>;

/// The UIDs a mailbox's clients are shown on the replica, with a login to pair them with
/// the primary's again after a failback (kept in memory only).
#[derive(Debug)]
pub(super) struct Shown {
    pub login: Credentials,
    pub cell: Arc<TranslationCell>,
}

/// One mailbox levee follows.
#[derive(Debug)]
pub struct Followed {
    pub key: Key,
    pub catalogue: Mutex<Catalogue>,
    /// Something changed it: look again now.
    pub poke: Notify,
    /// The catalogue has been filled once.
    pub ready: watch::Sender<bool>,
    /// The flag changes of the last looks; its version goes up with every look that
    /// changed the mailbox, and is published for hibernating sessions.
    pub flag_log: Mutex<FlagLog>,
    pub news: watch::Sender<u64>,
    sessions: Mutex<usize>,
    stop: Mutex<Option<CancellationToken>>,
}

impl Followed {
    pub fn catalogue(&self) -> MutexGuard<'_, Catalogue> {
        self.catalogue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn flag_log(&self) -> MutexGuard<'_, FlagLog> {
        self.flag_log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A look changed the mailbox: `flags` are its flag changes (server UIDs).
    pub fn changed(&self, flags: Vec<(u32, Vec<String>)>) {
        let version = self.flag_log().record(flags);
        self.news.send_replace(version);
    }
}

/// Shared by every IMAP session.
#[derive(Debug)]
pub struct Registry {
    /// Mailboxes followed at the primary (their catalogues serve UID continuity) and at
    /// the replica (for what clients change there while it is active).
    followed: Mutex<HashMap<Key, Arc<Followed>>>,
    followed_at_replica: Mutex<HashMap<Key, Arc<Followed>>>,
    /// On the replica: per mailbox, how its clients see it.
    pub(super) translations: Mutex<HashMap<Key, Shown>>,
    /// The replica's messages of the mailboxes followed at the primary, kept ahead of a
    /// failover.
    pub(super) known_at_replica: Arc<KnownAtReplica>,
    /// At the primary after a failback: per mailbox, how its clients see it
    /// ([`super::homecoming`]).
    pub(super) homes: Mutex<HashMap<Key, Arc<TranslationCell>>>,
    /// Some mailbox has a translation at the primary.
    pub(super) any_home: std::sync::atomic::AtomicBool,
    pub(super) journal: Journal,
    /// The IMAP servers: (primary, replica).
    pub(super) servers: (Option<SocketAddr>, Option<SocketAddr>),
    changes: mpsc::UnboundedSender<MailboxRecord>,
    at_replica: mpsc::UnboundedSender<MailboxRecord>,
    pub(super) failover: Option<Failover>,
    pub(super) shutdown: CancellationToken,
    pub(super) limit: Duration,
}

/// A session's hold on a followed mailbox; the following stops with the last one.
#[derive(Debug)]
pub struct Following {
    followed: Arc<Followed>,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut sessions = self
            .followed
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *sessions -= 1;
        if *sessions == 0
            && let Some(stop) = self
                .followed
                .stop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            stop.cancel();
        }
    }
}

impl Following {
    pub fn followed(&self) -> &Arc<Followed> {
        &self.followed
    }

    /// Waits (at most `limit`) until levee knows the mailbox: a change the client makes
    /// from then on is seen as a change.
    pub async fn ready(&self, limit: Duration) {
        let mut ready = self.followed.ready.subscribe();
        let _ = tokio::time::timeout(limit, ready.wait_for(|r| *r)).await;
    }
}

impl Registry {
    /// Starts the writer that journals mailbox changes in the order they are reported.
    /// Also pairs the UIDs clients saw on the replica with the primary's each time the
    /// primary becomes active again. `servers`: the IMAP servers (primary, replica).
    pub fn start(
        journal: Journal,
        failover: Option<Failover>,
        servers: (Option<SocketAddr>, Option<SocketAddr>),
        limit: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Registry> {
        let (changes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_changes(journal.clone(), queue, Backend::Primary));
        let (at_replica, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_changes(journal.clone(), queue, Backend::Replica));
        let registry = Arc::new(Registry {
            followed: Mutex::new(HashMap::new()),
            followed_at_replica: Mutex::new(HashMap::new()),
            translations: Mutex::new(HashMap::new()),
            known_at_replica: Arc::default(),
            homes: Mutex::new(HashMap::new()),
            any_home: std::sync::atomic::AtomicBool::new(super::homecoming::any_kept(&journal)),
            journal,
            servers,
            changes,
            at_replica,
            failover,
            shutdown,
            limit,
        });
        tokio::spawn(super::homecoming::on_failback(registry.clone()));
        registry
    }

    /// Follows `mailbox` of the user logged in with `login` at `site`'s IMAP server `addr`.
    pub fn follow(
        &self,
        site: Backend,
        login: &Credentials,
        mailbox: &str,
        addr: SocketAddr,
    ) -> Following {
        let key = (login.user.clone(), mailbox.to_string());
        let followed = self
            .lock_followed_at(site)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Followed {
                    key,
                    catalogue: Mutex::new(Catalogue::default()),
                    poke: Notify::new(),
                    ready: watch::Sender::new(false),
                    flag_log: Mutex::new(FlagLog::default()),
                    news: watch::Sender::new(0),
                    sessions: Mutex::new(0),
                    stop: Mutex::new(None),
                })
            })
            .clone();
        *followed.sessions.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut stop = followed.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_none() {
            let token = self.shutdown.child_token();
            *stop = Some(token.clone());
            let follower = tracker::Follower {
                site,
                followed: followed.clone(),
                login: login.clone(),
                addr,
                changes: match site {
                    Backend::Primary => self.changes.clone(),
                    Backend::Replica => self.at_replica.clone(),
                },
                failover: self.failover.clone(),
                limit: self.limit,
                seed: std::sync::Mutex::new(match site {
                    Backend::Replica => self.known_at_replica.get(&followed.key),
                    Backend::Primary => None,
                }),
            };
            if let (Backend::Primary, Some(replica)) = (site, self.servers.1) {
                let keeper = Keeper {
                    lists: self.known_at_replica.clone(),
                    key: followed.key.clone(),
                    login: login.clone(),
                    addr: replica,
                    failover: self.failover.clone(),
                    limit: self.limit,
                };
                tokio::spawn(keeper.run(token.clone()));
            }
            tokio::spawn(follower.run(token));
        }
        drop(stop);
        Following { followed }
    }

    /// What levee knows of a mailbox at the primary, if it followed it.
    pub fn catalogue(&self, key: &Key) -> Option<Catalogue> {
        let followed = self.lock_followed().get(key).cloned()?;
        let catalogue = followed.catalogue().clone();
        (catalogue.uidvalidity != 0).then_some(catalogue)
    }

    /// Looks at a mailbox followed at `site` again now (a session just changed it).
    pub fn poke(&self, site: Backend, key: &Key) {
        if let Some(followed) = self.lock_followed_at(site).get(key) {
            followed.poke.notify_one();
        }
    }

    /// Journals a change a session saw the server accept at the primary.
    pub fn record(&self, user: &str, change: MailboxChange) {
        let _ = self.changes.send(MailboxRecord {
            user: user.to_string(),
            change,
        });
    }

    /// Journals a change a session saw the replica accept while it was the active site,
    /// for the primary to get before a failback.
    pub fn record_at_replica(&self, user: &str, change: MailboxChange) {
        let _ = self.at_replica.send(MailboxRecord {
            user: user.to_string(),
            change,
        });
    }

    /// The translation for a session on the replica (`addr`) with `mailbox` selected:
    /// built once per mailbox, shared by every session of the user. `None` when levee never
    /// followed the mailbox or continuity is impossible.
    pub async fn translation(
        &self,
        login: &Credentials,
        mailbox: &str,
        addr: SocketAddr,
    ) -> Option<Arc<Translation>> {
        let key = (login.user.clone(), mailbox.to_string());
        let catalogue = self.catalogue(&key)?;
        // What the clients know, when they came back to the primary after a failback.
        let catalogue = match self.home_now(&key) {
            Some(home) => home.present(&catalogue),
            None => catalogue,
        };
        let cell = self
            .translations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Shown {
                login: login.clone(),
                cell: Arc::default(),
            })
            .cell
            .clone();
        let built = cell
            .get_or_try_init(|| async {
                let work = async {
                    let mut conn = Conn::open(addr).await?;
                    conn.login(login).await?;
                    let cached = self.known_at_replica.get(&key);
                    known_at_replica::refresh(&mut conn, mailbox, cached.as_deref()).await
                };
                let replica = Arc::new(conn::within(self.limit, work).await?);
                self.known_at_replica.put(key.clone(), replica.clone());
                let translation = Translation::build(&catalogue, &replica.known, replica.validity);
                match &translation {
                    Some(t) => tracing::info!(
                        user = %key.0, mailbox = %key.1, kept = t.kept, missing = t.missing.len(),
                        "UIDs at the replica translated to the primary's"
                    ),
                    None => {
                        metrics::counter!(crate::metrics::IMAP_UID_CONTINUITY_LOST).increment(1);
                        tracing::warn!(
                            user = %key.0, mailbox = %key.1,
                            "the replica's messages cannot keep the primary's UIDs; clients will resynchronize this mailbox"
                        );
                    }
                }
                Ok::<_, conn::ConnError>(translation.map(Arc::new))
            })
            .await;
        match built {
            Ok(translation) => translation.clone(),
            Err(err) => {
                tracing::warn!(user = %key.0, mailbox = %key.1, %err, "no UID translation");
                None
            }
        }
    }

    /// The translation of `user`'s `mailbox` on the replica if one was built already
    /// (never waits).
    pub fn built_translation(&self, user: &str, mailbox: &str) -> Option<Arc<Translation>> {
        let key = (user.to_string(), mailbox.to_string());
        let translations = self.translations.lock().unwrap_or_else(|p| p.into_inner());
        translations.get(&key)?.cell.get()?.clone()
    }

    fn lock_followed(&self) -> MutexGuard<'_, HashMap<Key, Arc<Followed>>> {
        self.lock_followed_at(Backend::Primary)
    }

    fn lock_followed_at(&self, site: Backend) -> MutexGuard<'_, HashMap<Key, Arc<Followed>>> {
        let map = match site {
            Backend::Primary => &self.followed,
            Backend::Replica => &self.followed_at_replica,
        };
        map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends each change made at `site` to the journal, in order, for the other site. A
/// change made at the primary has happened already: its state says so at once (only the
/// replica's applier has work to do). One made at the replica goes on the primary's work
/// list ([`crate::resync`] makes it there).
async fn write_changes(
    journal: Journal,
    mut queue: mpsc::UnboundedReceiver<MailboxRecord>,
    site: Backend,
) {
    while let Some(record) = queue.recv().await {
        let change = record.change.name();
        let kind = match site {
            Backend::Primary => RecordKind::Mailbox(record),
            Backend::Replica => RecordKind::MailboxAtReplica(record),
        };
        let new = NewRecord {
            time_ms: now_ms(),
            kind,
        };
        let appended = match journal.append(new).await {
            Ok(appended) => appended,
            Err(err) => {
                metrics::counter!(crate::metrics::IMAP_CHANGES_LOST).increment(1);
                tracing::error!(%err, change, ?site, "a mailbox change could not be journaled; the other site will not see it");
                continue;
            }
        };
        let seq = appended.seq;
        let marked = match site {
            Backend::Primary => {
                let mut state = DeliveryState::pending(now_ms());
                state.status = DeliveryStatus::Delivered;
                state.last_reply = Some("made at the primary by the client".into());
                journal.set_state(seq, &state)
            }
            Backend::Replica => journal.resync_mark(seq),
        };
        if let Err(err) = marked {
            tracing::error!(%err, seq, change, ?site, "cannot mark a journaled mailbox change; the other site may not see it");
        }
        metrics::counter!(crate::metrics::IMAP_CHANGES_JOURNALED, "change" => change).increment(1);
        tracing::debug!(seq, change, ?site, "mailbox change journaled");
    }
}
