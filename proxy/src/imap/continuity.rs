//! What a session does for continuity beyond relaying: on the primary it has levee follow
//! the selected mailbox and journals the changes the server accepted; on the replica it
//! presents the primary's UIDs ([`Translation`]) and, when it arrives there, tells the
//! client which messages it knew are gone.

use std::sync::Arc;

use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use levee_journal::{MailboxChange, MessageRef};

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;

use super::changes::Change;
use super::framing::ClientMessage;
use super::modseq;
use super::pump::Pump;
use super::rewrite;
use super::seqmap::{LISTING, MAX_LISTED, SeqMap, expand, listed_uids};
use super::session::Session;
use super::state::{Finished, tagged_status};
use super::uidmap::{Catalogue, Translation, runs, set_of};
use crate::failover::controller::Backend;

impl Session {
    /// Acts on a command's completion.
    pub(super) fn finished(&mut self, finished: Finished) {
        match finished {
            Finished::Selected => {
                self.follow_selected();
                self.await_catalogue = self.following.is_some();
            }
            Finished::Deselected => {
                self.following = None;
                self.translation = None;
                self.seqmap = None;
            }
            Finished::Changed(change) => self.journal_change(change),
            Finished::Other => {}
        }
    }

    /// Has levee follow the selected mailbox at this session's site (what clients change
    /// there is journaled for the other site).
    pub(super) fn follow_selected(&mut self) {
        self.following = None;
        if let (Some(login), Some(name), Some(addr)) = (
            self.state.login.clone(),
            self.state.selected_name(),
            self.shared.imap_addr(self.backend),
        ) {
            let registry = &self.shared.registry;
            self.following = Some(registry.follow(self.backend, &login, &name, addr));
        }
    }

    fn journal_change(&mut self, change: Change) {
        let copied = self.copied.take();
        let Some(login) = &self.state.login else {
            return;
        };
        let registry = &self.shared.registry;
        let selected = self.state.selected_name();
        let change = match change {
            Change::Touch => {
                if let Some(name) = selected {
                    registry.poke(self.backend, &(login.user.clone(), name));
                }
                return;
            }
            Change::Append {
                mailbox,
                flags,
                internal_date,
                body,
            } => MailboxChange::Append {
                mailbox,
                flags,
                internal_date,
                body,
            },
            Change::Copy { to, set, uid } => {
                let Some(from) = selected else {
                    return;
                };
                let key = (login.user.clone(), from.clone());
                registry.poke(self.backend, &key);
                let Some(catalogue) = registry.catalogue(&key) else {
                    tracing::warn!(mailbox = %from, "a copy from a mailbox levee does not follow is not journaled");
                    return;
                };
                let messages = match self.backend {
                    // The client's UIDs or numbers, as the primary's.
                    Backend::Primary => {
                        let set = match (&self.translation, &self.seqmap, uid) {
                            (Some(t), _, true) => t.to_replica(&set),
                            (_, Some(map), false) => map.set_to_server(&set),
                            _ => set,
                        };
                        resolve(&catalogue, &set, uid)
                    }
                    // At the replica: the messages the primary had, as the client knows
                    // them (mail that came during the outage is copied back as such).
                    Backend::Replica if uid => {
                        let shown = match registry.home_now(&key) {
                            Some(home) => home.present(&catalogue),
                            None => catalogue,
                        };
                        resolve(&shown, &set, true)
                    }
                    // By message number: the server's COPYUID names the messages by its
                    // own UIDs, presented as the client knows them.
                    Backend::Replica => {
                        let Some(copied) = copied else {
                            tracing::warn!(mailbox = %from, "a COPY by message number at the replica without COPYUID is not copied to the primary");
                            return;
                        };
                        let presented: Vec<u32> = copied
                            .iter()
                            .filter_map(|&r| match &self.translation {
                                Some(t) => t.presented(r),
                                None => Some(r),
                            })
                            .collect();
                        if presented.is_empty() {
                            return;
                        }
                        let shown = match registry.home_now(&key) {
                            Some(home) => home.present(&catalogue),
                            None => catalogue,
                        };
                        resolve(&shown, &set_of(runs(presented)), true)
                    }
                };
                if messages.is_empty() {
                    return;
                }
                MailboxChange::Copy { from, to, messages }
            }
            Change::Create(mailbox) => MailboxChange::Create { mailbox },
            Change::Delete(mailbox) => MailboxChange::Delete { mailbox },
            Change::Rename(from, to) => MailboxChange::Rename { from, to },
        };
        match self.backend {
            Backend::Primary => registry.record(&login.user, change),
            Backend::Replica => registry.record_at_replica(&login.user, change),
        }
    }

    /// The command as the replica must see it, when it names UIDs or message numbers.
    pub(super) fn translated(&self, command: &Command<'_>) -> Option<ClientMessage> {
        rewrite::command(
            command,
            self.translation.as_deref()?,
            self.seqmap.as_deref(),
        )
    }

    /// Lists the mailbox just selected on the replica (behind the SELECT, on the same
    /// connection), so that its numbering can be mapped; the client's next commands wait.
    pub(super) fn request_listing(&mut self) {
        let tag = LISTING_TAG.to_string();
        let line = format!("{tag} {LISTING}\r\n");
        self.send_upstream(ClientMessage {
            bytes: line.into_bytes(),
            sync_points: Vec::new(),
        });
        self.listing = Some(Box::new(Listing { tag, uids: None }));
    }

    /// Takes the responses to levee's listing (the client never sees them); `true` when
    /// `line` was one. When it completes, the numbering is set up and the client's waiting
    /// commands go on.
    pub(super) fn listing_response(&mut self, pump: &mut Pump, line: &[u8]) -> bool {
        let Some(listing) = self.listing.as_deref_mut() else {
            return false;
        };
        if let Some(uids) = listed_uids(line, &listing.tag) {
            listing.uids = Some(uids);
            return true;
        }
        match tagged_status(line) {
            Some((tag, _)) if tag == listing.tag => {}
            _ => return false,
        }
        let uids = self.listing.take().and_then(|l| l.uids);
        self.seqmap = match (&self.translation, uids) {
            (Some(t), Some(uids)) => SeqMap::new(t, &uids, 0).map(Box::new),
            (Some(t), None) if !t.ordered => {
                tracing::warn!(
                    "the replica did not list the mailbox; message numbers may differ from the client's"
                );
                None
            }
            _ => None,
        };
        self.take_client_messages(pump);
        true
    }

    /// The response head as the client must see it, when it names UIDs or numbers.
    pub(super) fn translated_head(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line.len() > 9 && line[..9].eq_ignore_ascii_case(b"* STATUS ") {
            let user = &self.state.login.as_ref()?.user;
            let registry = &self.shared.registry;
            return match self.backend {
                Backend::Replica => {
                    rewrite::status_head(line, |mailbox| registry.built_translation(user, mailbox))
                }
                Backend::Primary if registry.any_home() => {
                    rewrite::status_head(line, |mailbox| registry.built_home(user, mailbox))
                }
                Backend::Primary => None,
            };
        }
        let translation = self.translation.as_deref()?;
        let uid_search = self.state.uid_search_in_flight();
        let numbered = match self.seqmap.as_deref_mut() {
            Some(map) => map.response_head(line, !uid_search),
            None => None,
        };
        match rewrite::response_head(numbered.as_deref().unwrap_or(line), translation, uid_search) {
            Some(rewritten) => Some(rewritten),
            None => numbered,
        }
    }

    /// Looks up (or builds) the translation for `mailbox` on the current backend: on the
    /// replica after a failover, at the primary after a failback.
    pub(super) async fn translation_for(&self, mailbox: &str) -> Option<Arc<Translation>> {
        let login = self.state.login.as_ref()?;
        let registry = &self.shared.registry;
        match self.backend {
            Backend::Replica => {
                let addr = self.shared.imap_addr(Backend::Replica)?;
                registry.translation(login, mailbox, addr).await
            }
            Backend::Primary => registry.home_translation(login, mailbox).await,
        }
    }

    /// Keeps a SELECT back until its translation is in; the client's next commands wait
    /// behind it as they do behind a listing.
    pub(super) fn hold_select(&mut self, message: ClientMessage) {
        self.held_select = Some(message);
        self.listing = Some(Box::new(Listing {
            tag: LISTING_TAG.to_string(),
            uids: None,
        }));
    }

    /// Looks up the translation for the SELECT of `mailbox` just sent (or held), then
    /// sends a held one with its QRESYNC values as the server knows them, and the listing
    /// behind it.
    pub(super) async fn select_translated(&mut self, mailbox: &str) {
        self.translation = self.translation_for(mailbox).await;
        let Some(held) = self.held_select.take() else {
            return;
        };
        let decoded = CommandCodec::default().decode(&held.bytes);
        let rewritten = match decoded {
            Ok((b"", mut command)) => {
                let known = match self.translation.as_deref() {
                    Some(t) => rewrite::qresync(&mut command, t),
                    None => false,
                };
                let shifted = modseq::command(&mut command, self.modseq);
                (known || shifted).then(|| rewrite::encode(&command))
            }
            _ => None,
        };
        self.send_upstream(rewritten.unwrap_or(held));
        self.listing = None;
        self.request_listing();
    }

    /// Whether a SELECT of `mailbox` needs its translation (and levee's listing): always
    /// on the replica; at the primary, once a failback left the mailbox one.
    pub(super) fn translates(&self, mailbox: &str) -> bool {
        match (self.backend, &self.state.login) {
            (Backend::Replica, _) => true,
            (Backend::Primary, Some(login)) => {
                let registry = &self.shared.registry;
                registry.any_home()
                    && registry
                        .home_now(&(login.user.clone(), mailbox.to_string()))
                        .is_some()
            }
            (Backend::Primary, None) => false,
        }
    }

    /// After a move to the replica with a mailbox selected: translate from now on (with
    /// `listed`, the replica's UIDs right after the new SELECT, numbers too), and expunge
    /// (for the client, with `expunge`) the messages it knew that the replica does not
    /// have.
    pub(super) async fn arrive(
        &mut self,
        pump: &mut Pump,
        listed: Option<Vec<u32>>,
        expunge: bool,
    ) {
        self.translation = None;
        self.seqmap = None;
        self.follow_selected();
        let Some(name) = self.state.selected_name() else {
            return;
        };
        // What the client changes from now on must be news to the follower, not its
        // starting point.
        if let Some(following) = &self.following {
            following.ready(super::session::CATALOGUE_WAIT).await;
        }
        self.translation = self.translation_for(&name).await;
        if let (Some(t), Some(listed)) = (&self.translation, &listed) {
            self.seqmap = SeqMap::new(t, listed, 0).map(Box::new);
        }
        let Some(translation) = self.translation.as_ref().filter(|_| expunge) else {
            return;
        };
        for seq in &translation.expunge_seqs {
            pump.say(format!("* {seq} EXPUNGE\r\n").as_bytes());
        }
    }
}

/// levee's own listing of a mailbox on the replica, under way.
#[derive(Debug)]
pub(super) struct Listing {
    tag: String,
    uids: Option<Vec<u32>>,
}

/// The tag of levee's listing (one at a time per session).
const LISTING_TAG: &str = "levee.list";

/// The messages a COPY names, by UID or by sequence number, as the journal names them.
fn resolve(catalogue: &Catalogue, set: &SequenceSet, uid: bool) -> Vec<MessageRef> {
    let uids: Vec<u32> = catalogue.messages.keys().copied().collect();
    let Some(&last_uid) = uids.last() else {
        return Vec::new();
    };
    let largest = if uid { last_uid } else { uids.len() as u32 };
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    let mut picked = Vec::new();
    for sequence in set.0.as_ref() {
        let (a, b) = match sequence {
            Sequence::Single(v) => (value(v), value(v)),
            Sequence::Range(a, b) => (value(a).min(value(b)), value(a).max(value(b))),
        };
        if uid {
            picked.extend(catalogue.messages.range(a..=b).map(|(&u, _)| u));
        } else {
            let from = (a as usize).saturating_sub(1);
            let to = (b as usize).min(uids.len());
            picked.extend(uids.get(from..to).unwrap_or_default());
        }
    }
    picked.sort_unstable();
    picked.dedup();
    picked
        .into_iter()
        .filter_map(|u| catalogue.messages.get(&u))
        .map(|known| known.identity.to_ref(known.uid))
        .collect()
}

/// The source UIDs of a `COPYUID` response code (RFC 4315) on a status response, tagged or
/// untagged (MOVE reports it before its expunges, RFC 6851): the UIDs, on the server that
/// said it, of the messages a COPY or MOVE took.
pub(super) fn copyuid_source(line: &[u8]) -> Option<Vec<u32>> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.splitn(5, ' ');
    let (_tag, status, code) = (words.next()?, words.next()?, words.next()?);
    if !status.eq_ignore_ascii_case("OK") || !code.eq_ignore_ascii_case("[COPYUID") {
        return None;
    }
    let (_validity, source) = (words.next()?, words.next()?);
    let source = source.split(' ').next()?;
    expand(&SequenceSet::try_from(source).ok()?, MAX_LISTED).filter(|uids| !uids.is_empty())
}

#[cfg(test)]
mod tests {
    use super::copyuid_source;

    #[test]
    fn copyuid_source_reads_tagged_and_untagged_codes() {
        assert_eq!(
            copyuid_source(b"a4 OK [COPYUID 1699 7,9:10 1:3] Copy completed\r\n"),
            Some(vec![7, 9, 10])
        );
        // MOVE: untagged, before the expunges; a descending range names the same UIDs.
        assert_eq!(
            copyuid_source(b"* ok [copyuid 1699 12:11 4:5] Moved UIDs.\r\n"),
            Some(vec![11, 12])
        );
        assert_eq!(copyuid_source(b"a4 OK Copy completed\r\n"), None);
        assert_eq!(copyuid_source(b"a4 NO [COPYUID 1 2 3] odd\r\n"), None);
        assert_eq!(copyuid_source(b"* 3 EXISTS\r\n"), None);
        assert_eq!(copyuid_source(b"a4 OK [COPYUID 1699 *:3 1:3]\r\n"), None);
        // A server's broken answer naming billions of messages is not spelled out.
        assert_eq!(copyuid_source(b"a OK [COPYUID 1 1:4294967295 1]\r\n"), None);
    }
}
