//! What levee knows of a mailbox at the replica before a failover needs it.
//!
//! A session moving to the replica needs the replica's messages of its mailbox, by UID and
//! identity, to present the UIDs its client knows ([`super::uidmap::Translation`]).
//! Fetching them whole at the failover costs a read of every message's header: about
//! 3 s for an INBOX of 15,000 messages here, and every session of that mailbox waits for
//! it. So while a mailbox is followed at the primary, levee keeps the replica's list of it
//! and brings it up to date every few minutes; at the failover only what changed since is
//! asked for: the UIDs present (one `UID SEARCH ALL`) and the identities of the messages
//! above the last UID known. A UID names the same message for as long as the mailbox's
//! UIDVALIDITY stays (RFC 9051 section 2.3.1.1); a new UIDVALIDITY starts the list over.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imap_codec::imap_types::response::{Data, Response};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Conn, ConnError};
use super::identity::{self, Known, fetch_known};
use super::registry::Key;
use super::state::Credentials;
use super::tracker;
use crate::failover::controller::Backend;
use crate::failover::driver::Failover;

/// How often a followed mailbox's list at the replica is brought up to date.
const REFRESH: Duration = Duration::from_secs(120);
/// Lists brought up to date at once (each is a login at the replica).
const AT_ONCE: usize = 2;

/// The replica's messages of one mailbox, by UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaList {
    pub validity: u32,
    /// Ascending by UID.
    pub known: Vec<Known>,
}

/// The lists levee keeps, shared by the registry and the tasks that refresh them.
#[derive(Debug)]
pub struct KnownAtReplica {
    lists: Mutex<HashMap<Key, Arc<ReplicaList>>>,
    turns: Semaphore,
}

impl Default for KnownAtReplica {
    fn default() -> Self {
        KnownAtReplica {
            lists: Mutex::default(),
            turns: Semaphore::new(AT_ONCE),
        }
    }
}

impl KnownAtReplica {
    pub fn get(&self, key: &Key) -> Option<Arc<ReplicaList>> {
        self.lock().get(key).cloned()
    }

    pub fn put(&self, key: Key, list: Arc<ReplicaList>) {
        self.lock().insert(key, list);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<ReplicaList>>> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Examines `mailbox` on `conn` and returns its list, built on `cached` when that has the
/// same UIDVALIDITY (only newer messages are fetched), else whole.
pub async fn refresh(
    conn: &mut Conn,
    mailbox: &str,
    cached: Option<&ReplicaList>,
) -> Result<ReplicaList, ConnError> {
    let examined = conn.run(identity::examine(mailbox)?).await?;
    let (validity, _) = tracker::uid_codes(&examined);
    let Some(cached) = cached.filter(|c| c.validity == validity && validity != 0) else {
        let known = fetch_known(conn, 1).await?;
        metrics::counter!(crate::metrics::IMAP_REPLICA_LISTS, "how" => "whole").increment(1);
        return Ok(ReplicaList { validity, known });
    };
    let searched = conn.run(identity::command("UID SEARCH ALL")).await?;
    let present: HashSet<u32> = searched
        .iter()
        .filter_map(|r| match r {
            Response::Data(Data::Search(uids, ..)) => Some(uids.iter().map(|u| u.get())),
            _ => None,
        })
        .flatten()
        .collect();
    let newer = fetch_known(conn, last_uid(cached) + 1).await?;
    metrics::counter!(crate::metrics::IMAP_REPLICA_LISTS, "how" => "changes").increment(1);
    Ok(merged(cached, &present, newer))
}

fn last_uid(list: &ReplicaList) -> u32 {
    list.known.last().map_or(0, |k| k.uid)
}

/// `cached` less the messages no longer `present`, followed by the `newer` ones.
fn merged(cached: &ReplicaList, present: &HashSet<u32>, newer: Vec<Known>) -> ReplicaList {
    let last = last_uid(cached);
    let mut known: Vec<Known> = (cached.known.iter())
        .filter(|k| present.contains(&k.uid))
        .cloned()
        .collect();
    known.extend(newer.into_iter().filter(|k| k.uid > last));
    ReplicaList {
        validity: cached.validity,
        known,
    }
}

/// What a task keeping one mailbox's list needs.
#[derive(Debug)]
pub struct Keeper {
    pub lists: Arc<KnownAtReplica>,
    pub key: Key,
    pub login: Credentials,
    /// The replica's IMAP server.
    pub addr: SocketAddr,
    pub failover: Option<Failover>,
    pub limit: Duration,
}

impl Keeper {
    /// Keeps the list up to date while the primary is active, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let primary_active =
                (self.failover.as_ref()).is_none_or(|f| f.active().backend == Backend::Primary);
            if primary_active {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.refresh_once() => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    async fn refresh_once(&self) {
        let Ok(_turn) = self.lists.turns.acquire().await else {
            return;
        };
        let cached = self.lists.get(&self.key);
        let work = async {
            let mut conn = Conn::open(self.addr).await?;
            conn.login(&self.login).await?;
            refresh(&mut conn, &self.key.1, cached.as_deref()).await
        };
        match conn::within(self.limit, work).await {
            Ok(list) => self.lists.put(self.key.clone(), Arc::new(list)),
            Err(err) => tracing::debug!(
                user = %self.key.0, mailbox = %self.key.1, %err,
                "the replica's list of a mailbox not brought up to date"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::identity::Identity;

    fn known(uid: u32, id: &str) -> Known {
        Known {
            uid,
            identity: Identity {
                trace: None,
                message_id: Some(format!("<{id}>")),
                size: 100,
            },
            flags: Vec::new(),
        }
    }

    #[test]
    fn merged_drops_the_expunged_and_adds_the_newer() {
        let cached = ReplicaList {
            validity: 7,
            known: vec![known(1, "a"), known(2, "b"), known(4, "c")],
        };
        let present: HashSet<u32> = [1, 4, 5, 6].into();
        // `n:*` names the last message even below n: a stale one is not added twice.
        let newer = vec![known(4, "c"), known(5, "d"), known(6, "e")];
        let list = merged(&cached, &present, newer);
        let uids: Vec<u32> = list.known.iter().map(|k| k.uid).collect();
        assert_eq!(uids, [1, 4, 5, 6]);
        assert_eq!(list.validity, 7);
    }
}
