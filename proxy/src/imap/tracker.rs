//! Following one mailbox at one site on levee's own connection (logged in as the user, the
//! mailbox EXAMINEd, in IDLE between looks): it keeps the [`Catalogue`] current (at the
//! primary, for UID continuity), and journals what clients changed — flags and expunges —
//! so that the other site can do the same: at the primary for the replica's applier; at
//! the replica, while it is the active site, for the primary before a failback.
//!
//! It journals only while its site is the active one, and pauses while it is not: the
//! catalogue then stays as it was (a primary that comes back must never be able to tell
//! the replica that mail is gone), and it resumes when its site is active again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::response::{Code, Data, Response, Status};
use levee_journal::{MailboxChange, MailboxRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Conn, ConnError};
use super::identity::{self, Known, fetch_known};
use super::known_at_replica::ReplicaList;
use super::registry::Followed;
use super::state::Credentials;
use crate::failover::controller::Backend;
use crate::failover::driver::Active;
use crate::failover::driver::Failover;

/// Longest stay in IDLE without a look (servers drop IDLE after 30 minutes).
const IDLE_AT_MOST: Duration = Duration::from_secs(25 * 60);
/// Pause before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// The task that follows one mailbox.
#[derive(Debug)]
pub struct Follower {
    /// The site it follows the mailbox at.
    pub site: Backend,
    pub followed: Arc<Followed>,
    pub login: Credentials,
    pub addr: SocketAddr,
    pub changes: mpsc::UnboundedSender<MailboxRecord>,
    pub failover: Option<Failover>,
    pub limit: Duration,
    /// At the replica: the list of the mailbox levee kept ahead of the failover, which
    /// stands for the first look's fetch of every header ([`super::known_at_replica`]).
    pub seed: std::sync::Mutex<Option<Arc<ReplicaList>>>,
}

impl Follower {
    pub async fn run(self, stop: CancellationToken) {
        let (user, mailbox) = self.followed.key.clone();
        let site = self.site;
        loop {
            if !self.site_active() {
                tracing::debug!(%user, %mailbox, ?site, "the site is not active; following paused");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.until_active() => continue,
                }
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = self.follow() => result,
            };
            if let Err(err) = result {
                tracing::debug!(%user, %mailbox, %err, "following the mailbox failed; again shortly");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    fn site_active(&self) -> bool {
        match &self.failover {
            Some(f) => f.active().backend == self.site,
            None => self.site == Backend::Primary,
        }
    }

    /// Returns once the site is the active one (never, without failover at the replica).
    async fn until_active(&self) {
        let Some(failover) = &self.failover else {
            return std::future::pending().await;
        };
        let mut watch = failover.watch();
        let _ = watch
            .wait_for(|active: &Active| active.backend == self.site)
            .await;
    }

    async fn follow(&self) -> Result<(), ConnError> {
        let (_, mailbox) = &self.followed.key;
        let mut conn = conn::within(self.limit, async {
            let mut conn = Conn::open(self.addr).await?;
            conn.login(&self.login).await?;
            Ok(conn)
        })
        .await?;
        let examined = conn.run(identity::examine(mailbox)?).await?;
        let (validity, uidnext) = uid_codes(&examined);
        {
            let mut catalogue = self.followed.catalogue();
            if catalogue.uidvalidity != validity {
                // A new mailbox under the same name: nothing known carries over.
                catalogue.messages.clear();
                catalogue.uidvalidity = validity;
            }
            catalogue.uidnext = uidnext;
        }
        let mut first = true;
        loop {
            // The server reports a change made during a look at its end: look again then.
            for _ in 0..8 {
                if !self.look(&mut conn).await? {
                    break;
                }
            }
            if first {
                tracing::debug!(
                    user = %self.followed.key.0, mailbox = %mailbox,
                    messages = self.followed.catalogue().messages.len(), validity,
                    site = ?self.site, "following the mailbox"
                );
                self.followed.ready.send_replace(true);
                first = false;
            }
            self.idle(&mut conn).await?;
            if !self.site_active() {
                return Ok(());
            }
        }
    }

    /// Brings the catalogue up to date and journals what changed since the last look;
    /// `true` when the server reported yet another change meanwhile.
    async fn look(&self, conn: &mut Conn) -> Result<bool, ConnError> {
        let flags = conn
            .run(identity::command("UID FETCH 1:* (UID FLAGS)"))
            .await?;
        let more = flags.iter().any(|r| match r {
            Response::Data(Data::Expunge(_) | Data::Exists(_) | Data::Vanished { .. }) => true,
            // A flag change another session made, reported without the UID we asked for.
            Response::Data(Data::Fetch { items, .. }) => !items
                .as_ref()
                .iter()
                .any(|i| matches!(i, imap_codec::imap_types::fetch::MessageDataItem::Uid(_))),
            _ => false,
        });
        let now: BTreeMap<u32, Vec<String>> = flags.into_iter().filter_map(uid_flags).collect();
        self.seed_once(&now);
        let next = self.followed.catalogue().uidnext;
        let from = self
            .followed
            .catalogue()
            .messages
            .keys()
            .next_back()
            .map_or(1, |last| last + 1)
            .min(next.max(1));
        let new = if now.range(from..).next().is_some() {
            fetch_known(conn, from).await?
        } else {
            Vec::new()
        };
        let (_, mailbox) = &self.followed.key;
        let mut expunged = Vec::new();
        let mut flagged = Vec::new();
        // The same changes by the server's UIDs, for hibernating sessions.
        let mut flag_news = Vec::new();
        let came = !new.is_empty();
        {
            let mut catalogue = self.followed.catalogue();
            catalogue.messages.retain(|uid, known| match now.get(uid) {
                None => {
                    expunged.push(known.identity.to_ref(*uid));
                    false
                }
                Some(flags) => {
                    if *flags != known.flags {
                        known.flags = flags.clone();
                        flagged.push((known.identity.to_ref(*uid), flags.clone()));
                        flag_news.push((*uid, flags.clone()));
                    }
                    true
                }
            });
            for known in new {
                catalogue.uidnext = catalogue.uidnext.max(known.uid + 1);
                catalogue.messages.insert(known.uid, known);
            }
        }
        if came || !expunged.is_empty() || !flag_news.is_empty() {
            self.followed.changed(flag_news);
        }
        // Journal only while the site is active: what the other site's clients did is not
        // news, and after a failover what the primary says is not news for the replica.
        if !self.site_active() {
            return Ok(false);
        }
        let user = &self.followed.key.0;
        if !flagged.is_empty() {
            self.send(
                user,
                MailboxChange::Flags {
                    mailbox: mailbox.clone(),
                    messages: flagged,
                },
            );
        }
        if !expunged.is_empty() {
            self.send(
                user,
                MailboxChange::Expunge {
                    mailbox: mailbox.clone(),
                    messages: expunged,
                },
            );
        }
        Ok(more)
    }

    /// Fills an empty catalogue from the kept list, with the flags the server reports
    /// `now`: the first look then fetches only the messages the list lacks, and, as after
    /// a fetch of every message, takes what it finds as the starting point.
    fn seed_once(&self, now: &BTreeMap<u32, Vec<String>>) {
        let Some(seed) = self.seed.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut catalogue = self.followed.catalogue();
        if !catalogue.messages.is_empty()
            || seed.validity == 0
            || catalogue.uidvalidity != seed.validity
        {
            return;
        }
        for known in &seed.known {
            if let Some(flags) = now.get(&known.uid) {
                let known = Known {
                    flags: flags.clone(),
                    ..known.clone()
                };
                catalogue.messages.insert(known.uid, known);
            }
        }
        metrics::counter!(crate::metrics::IMAP_REPLICA_LISTS, "how" => "kept").increment(1);
    }

    fn send(&self, user: &str, change: MailboxChange) {
        let _ = self.changes.send(MailboxRecord {
            user: user.to_string(),
            change,
        });
    }

    /// IDLE until the server reports something, a session pokes, or a while has passed.
    async fn idle(&self, conn: &mut Conn) -> Result<(), ConnError> {
        let tag = conn.send(identity::command("IDLE")).await?;
        match conn.response().await? {
            Response::CommandContinuationRequest(_) => {}
            other => return Err(ConnError::Refused(format!("IDLE: {other:?}"))),
        }
        tokio::select! {
            response = conn.response() => { response?; }
            _ = self.followed.poke.notified() => {}
            _ = tokio::time::sleep(IDLE_AT_MOST) => {}
        }
        conn.send_raw(b"DONE\r\n").await?;
        conn.complete(&tag).await.map(drop)
    }
}

/// UIDVALIDITY and UIDNEXT from the responses to a SELECT or EXAMINE (0 when absent).
pub fn uid_codes(responses: &[Response<'_>]) -> (u32, u32) {
    let mut validity = 0;
    let mut next = 0;
    for response in responses {
        if let Response::Status(Status::Untagged(body)) = response {
            match body.code {
                Some(Code::UidValidity(v)) => validity = v.get(),
                Some(Code::UidNext(n)) => next = n.get(),
                _ => {}
            }
        }
    }
    (validity, next)
}

fn uid_flags(response: Response<'static>) -> Option<(u32, Vec<String>)> {
    let Response::Data(Data::Fetch { items, .. }) = response else {
        return None;
    };
    let mut uid = None;
    let mut flags = Vec::new();
    for item in items.as_ref() {
        match item {
            imap_codec::imap_types::fetch::MessageDataItem::Uid(n) => uid = Some(n.get()),
            imap_codec::imap_types::fetch::MessageDataItem::Flags(list) => {
                flags = identity::flag_names(list);
            }
            _ => {}
        }
    }
    Some((uid?, flags))
}
