//! UID continuity back at the primary. While the replica was active, its clients learned
//! the UIDs levee presented there: the primary's for the messages both sites had, new
//! ones above those for mail that arrived during the outage. That mail reaches the primary
//! later (the failback's resync copies it), in whatever order and under whatever UIDs the
//! primary gives it. So when the primary is active again, levee pairs, per mailbox, what
//! the clients saw on the replica with what the primary has, exactly as after a failover,
//! and goes on presenting the clients' UIDs at the primary. Usually there is nothing to
//! translate, and nothing is kept. A translation that is needed is kept in the journal
//! too: a client that comes back after levee restarted still finds its UIDs.
//!
//! When the replica becomes active again later, what levee knows of the primary's mailbox
//! is presented through this translation before it is paired with the replica's.

use std::net::SocketAddr;
use std::sync::Arc;

use levee_journal::Journal;

use super::conn::{self, Conn, ConnError};
use super::identity::{self, fetch_known};
use super::registry::{Key, Registry, TranslationCell};
use super::state::Credentials;
use super::tracker::uid_codes;
use super::uidmap::{Catalogue, Translation};
use crate::failover::controller::Backend;

/// Looks at a mailbox this many times, this far apart, while the primary still lacks
/// messages the clients saw.
const SETTLE_TRIES: u32 = 10;
const SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Where the translation of a mailbox back at the primary is kept in the journal.
fn meta_key(key: &Key) -> String {
    format!("imap-uids-at-primary\u{0}{}\u{0}{}", key.0, key.1)
}

/// The translation kept for `key`, if any (an unreadable one counts as none, loudly).
pub fn load(journal: &Journal, key: &Key) -> Option<Arc<Translation>> {
    let bytes = match journal.get_meta(&meta_key(key)) {
        Ok(Some(bytes)) if !bytes.is_empty() => bytes,
        Ok(_) => return None,
        Err(err) => {
            tracing::error!(user = %key.0, mailbox = %key.1, %err, "cannot read the kept UID translation");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(t) => Some(Arc::new(t)),
        Err(err) => {
            tracing::error!(user = %key.0, mailbox = %key.1, %err, "the kept UID translation is unreadable");
            None
        }
    }
}

/// Set once any translation at the primary was kept: sessions then look for them.
const ANY_KEPT: &str = "imap-uids-at-primary";

/// Whether the journal holds any translation at the primary.
pub fn any_kept(journal: &Journal) -> bool {
    matches!(journal.get_meta(ANY_KEPT), Ok(Some(flag)) if flag == b"1")
}

fn keep(journal: &Journal, key: &Key, translation: Option<&Translation>) {
    let bytes = match translation {
        Some(t) => serde_json::to_vec(t).unwrap_or_default(),
        None => Vec::new(),
    };
    if translation.is_some()
        && let Err(err) = journal.set_meta(ANY_KEPT, b"1")
    {
        tracing::error!(%err, "cannot keep the UID translation");
    }
    if let Err(err) = journal.set_meta(&meta_key(key), &bytes) {
        tracing::error!(user = %key.0, mailbox = %key.1, %err, "cannot keep the UID translation");
    }
}

/// Logs in as `login`, EXAMINEs `mailbox` and lists its messages: (UIDVALIDITY, UIDNEXT,
/// messages).
async fn list(
    addr: SocketAddr,
    login: &Credentials,
    mailbox: &str,
) -> Result<(u32, u32, Vec<super::identity::Known>), ConnError> {
    let mut conn = Conn::open(addr).await?;
    conn.login(login).await?;
    let examined = conn.run(identity::examine(mailbox)?).await?;
    let (validity, uidnext) = uid_codes(&examined);
    let known = fetch_known(&mut conn, 1).await?;
    Ok((validity, uidnext, known))
}

impl Registry {
    /// Pairs what the clients of `key` saw on the replica (through `shown`) with what the
    /// primary has now. `None`: nothing to translate (or nothing can be).
    pub(super) async fn build_homecoming(
        &self,
        key: &Key,
        login: &Credentials,
        shown: &Translation,
        addrs: (SocketAddr, SocketAddr),
    ) -> Option<Arc<Translation>> {
        let (replica, primary) = addrs;
        let mut tries = 0;
        let (back, validity) = loop {
            tries += 1;
            let work = async {
                let replica = list(replica, login, &key.1).await?;
                let primary = list(primary, login, &key.1).await?;
                Ok::<_, ConnError>((replica, primary))
            };
            let ((_, replica_next, replica_known), (validity, _, primary_known)) =
                match conn::within(self.limit, work).await {
                    Ok(listed) => listed,
                    Err(err) => {
                        tracing::warn!(user = %key.0, mailbox = %key.1, %err,
                            "cannot pair the UIDs clients saw on the replica with the primary's; they may resynchronize this mailbox");
                        return None;
                    }
                };
            if validity != shown.primary_validity {
                break (None, validity);
            }
            let seen = Catalogue {
                uidvalidity: shown.primary_validity,
                uidnext: shown.presented_uidnext(replica_next),
                messages: replica_known
                    .into_iter()
                    .filter_map(|known| {
                        let uid = shown.presented(known.uid)?;
                        Some((uid, super::identity::Known { uid, ..known }))
                    })
                    .collect(),
            };
            let back = Translation::build(&seen, &primary_known, validity);
            // Mail the primary's MTA accepted a moment ago may still be on its way into
            // the mailbox: look again for a while before telling clients it is gone.
            if back.as_ref().is_some_and(|t| !t.missing.is_empty()) && tries < SETTLE_TRIES {
                tokio::time::sleep(SETTLE_PAUSE).await;
                continue;
            }
            break (back, validity);
        };
        if validity != shown.primary_validity {
            // A new mailbox under that name at the primary: every client starts afresh.
            keep(&self.journal, key, None);
            return None;
        }
        let back = back.filter(|t| !t.is_identity());
        keep(&self.journal, key, back.as_ref());
        match &back {
            Some(t) => {
                tracing::info!(user = %key.0, mailbox = %key.1, kept = t.kept, missing = t.missing.len(),
                "UIDs clients saw on the replica presented at the primary")
            }
            None => {
                tracing::debug!(user = %key.0, mailbox = %key.1, "the primary has the UIDs clients saw on the replica")
            }
        }
        back.map(Arc::new)
    }
}

impl Registry {
    /// Whether any mailbox is presented at the primary with other UIDs than its own (a
    /// cheap test before looking one up).
    pub fn any_home(&self) -> bool {
        self.any_home.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the clients of `key` see it at the primary, if levee knows yet (never waits; a
    /// translation kept in the journal is read once).
    pub fn home_now(&self, key: &Key) -> Option<Arc<Translation>> {
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = homes.get(key) {
            return cell.get().cloned().flatten();
        }
        let kept = load(&self.journal, key);
        if kept.is_some() {
            self.any_home
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let cell = TranslationCell::new_with(Some(kept.clone()));
        homes.insert(key.clone(), Arc::new(cell));
        kept
    }

    /// The translation for a session of `login` at the primary with `mailbox` selected:
    /// after a failback, the UIDs its clients saw on the replica; `None` for the
    /// primary's own. The first call after a failback pairs them (once per mailbox).
    pub async fn home_translation(
        &self,
        login: &Credentials,
        mailbox: &str,
    ) -> Option<Arc<Translation>> {
        let key = (login.user.clone(), mailbox.to_string());
        let (cell, shown) = {
            let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
            let shown = (self.translations.lock().unwrap_or_else(|p| p.into_inner())).remove(&key);
            match shown {
                Some(shown) => {
                    let cell: Arc<TranslationCell> = Arc::default();
                    homes.insert(key.clone(), cell.clone());
                    (cell, Some(shown))
                }
                None => (homes.entry(key.clone()).or_default().clone(), None),
            }
        };
        let home = cell
            .get_or_init(|| async {
                let on_replica = shown.as_ref().and_then(|s| s.cell.get().cloned().flatten());
                match (shown, on_replica, self.servers) {
                    (Some(shown), Some(t), (Some(primary), Some(replica))) => {
                        self.build_homecoming(&key, &shown.login, &t, (replica, primary))
                            .await
                    }
                    // Nothing was presented on the replica: what held before still holds.
                    _ => load(&self.journal, &key),
                }
            })
            .await
            .clone();
        if home.is_some() {
            self.any_home
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        home
    }

    /// The translation of `user`'s `mailbox` at the primary if one is known (never waits).
    pub fn built_home(&self, user: &str, mailbox: &str) -> Option<Arc<Translation>> {
        let key = (user.to_string(), mailbox.to_string());
        let homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        homes.get(&key)?.get()?.clone()
    }
}

/// Each time the primary becomes active again, pairs the UIDs of every mailbox presented
/// on the replica, whether or not a session is there to ask.
pub async fn on_failback(registry: Arc<Registry>) {
    let Some(failover) = registry.failover.clone() else {
        return;
    };
    let mut watch = failover.watch();
    loop {
        tokio::select! {
            _ = registry.shutdown.cancelled() => return,
            changed = watch.changed() => if changed.is_err() { return },
        }
        if watch.borrow_and_update().backend != Backend::Primary {
            continue;
        }
        let keys: Vec<(Credentials, String)> = {
            let translations = registry
                .translations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            translations
                .iter()
                .map(|(key, s)| (s.login.clone(), key.1.clone()))
                .collect()
        };
        for (login, mailbox) in keys {
            registry.home_translation(&login, &mailbox).await;
        }
    }
}
