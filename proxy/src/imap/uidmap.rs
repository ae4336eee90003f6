//! UID continuity: after a failover a session on the replica shows the client the
//! UIDVALIDITY and UIDs it knew from the primary, so a caching client re-downloads nothing.
//!
//! [`Translation::build`] pairs the primary's messages (as levee last saw them, a
//! [`Catalogue`]) with the replica's by [`Identity`]. Every paired message keeps the UID
//! the client knew, whatever order the two sites stored the messages in; the replica's
//! other messages get UIDs above any the client has seen (in the replica's order), and
//! every later replica UID is shifted by one offset. When the two sites' orders differ,
//! the client's message sequence numbers differ from the replica's too: a session then
//! maps them with a [`super::seqmap::SeqMap`]. Pure: no IO.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::identity::{Identity, Known};

/// What levee knows of one mailbox at the primary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: BTreeMap<u32, Known>,
}

/// How a session presents the UIDs its client knows. "Presented" UIDs are the ones the
/// client sees; "replica" UIDs are the server's: on the replica after a failover, or on
/// the primary after a failback (then "replica" means the primary's own UIDs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Translation {
    pub primary_validity: u32,
    pub replica_validity: u32,
    /// Every replica message listed when the translation was built.
    r2p: BTreeMap<u32, u32>,
    p2r: BTreeMap<u32, u32>,
    /// Replica UIDs above this (messages that arrived later) are presented as
    /// `uid + offset`, above every presented UID of a listed one.
    last_r: u32,
    offset: i64,
    /// UIDs the client knew from the primary whose messages the replica does not have.
    pub missing: Vec<u32>,
    /// Their message numbers in the client's view, highest first: the EXPUNGEs that tell
    /// a client arriving with that view.
    pub expunge_seqs: Vec<u32>,
    /// Messages that keep their UID.
    pub kept: usize,
    /// The presented UIDs ascend in the replica's order: sequence numbers agree.
    pub ordered: bool,
}

impl Translation {
    /// Pairs `catalogue` with the replica's messages. `None` only when the UIDs would run
    /// out (past 2^32 - 2); the session then shows the replica's own UIDs and UIDVALIDITY.
    pub fn build(
        catalogue: &Catalogue,
        replica: &[Known],
        replica_validity: u32,
    ) -> Option<Translation> {
        let pairs = pair_up(catalogue, replica);
        let kept = pairs.len();
        let mut listed: Vec<u32> = replica.iter().map(|k| k.uid).collect();
        listed.sort_unstable();
        listed.dedup();
        let known_max = catalogue.messages.keys().next_back().copied().unwrap_or(0);
        let paired_max = pairs.iter().map(|&(_, p)| p).max().unwrap_or(0);
        let mut next = u64::from(catalogue.uidnext)
            .max(u64::from(known_max) + 1)
            .max(u64::from(paired_max) + 1);
        let paired: HashMap<u32, u32> = pairs.iter().copied().collect();
        let mut r2p = BTreeMap::new();
        for &r in &listed {
            let p = match paired.get(&r) {
                Some(&p) => p,
                None => {
                    next += 1;
                    u32::try_from(next - 1).ok()?
                }
            };
            r2p.insert(r, p);
        }
        if next >= u64::from(NO_MESSAGE) {
            return None;
        }
        let last_r = listed.last().copied().unwrap_or(0);
        let offset = next as i64 - (i64::from(last_r) + 1);
        let ordered = r2p.values().zip(r2p.values().skip(1)).all(|(a, b)| a < b);
        let p2r = r2p.iter().map(|(&r, &p)| (p, r)).collect();
        let kept_p: HashSet<u32> = pairs.iter().map(|&(_, p)| p).collect();
        let mut missing = Vec::new();
        let mut expunge_seqs = Vec::new();
        for (at, &p) in catalogue.messages.keys().enumerate() {
            if !kept_p.contains(&p) {
                missing.push(p);
                expunge_seqs.push(u32::try_from(at + 1).ok()?);
            }
        }
        expunge_seqs.reverse();
        Some(Translation {
            primary_validity: catalogue.uidvalidity,
            replica_validity,
            r2p,
            p2r,
            last_r,
            offset,
            missing,
            expunge_seqs,
            kept,
            ordered,
        })
    }

    /// Every UID presented as itself, now and for messages to come: nothing to translate.
    pub fn is_identity(&self) -> bool {
        self.offset == 0
            && self.primary_validity == self.replica_validity
            && self.r2p.iter().all(|(r, p)| r == p)
    }

    /// `catalogue` (in the server's UIDs) as the client sees it.
    pub fn present(&self, catalogue: &Catalogue) -> Catalogue {
        Catalogue {
            uidvalidity: self.primary_validity,
            uidnext: self.presented_uidnext(catalogue.uidnext),
            messages: catalogue
                .messages
                .values()
                .filter_map(|known| {
                    let uid = self.presented(known.uid)?;
                    Some((
                        uid,
                        Known {
                            uid,
                            ..known.clone()
                        },
                    ))
                })
                .collect(),
        }
    }

    /// The UID the client sees for replica UID `r` (any `r` above the paired ones, too).
    pub fn presented(&self, r: u32) -> Option<u32> {
        if r > self.last_r {
            return u32::try_from(i64::from(r) + self.offset).ok();
        }
        self.r2p.get(&r).copied()
    }

    /// UIDNEXT as the client sees it.
    pub fn presented_uidnext(&self, replica_uidnext: u32) -> u32 {
        // Above the listed messages every presented UID is higher than any listed one's.
        self.presented(replica_uidnext.max(self.last_r + 1))
            .unwrap_or(u32::MAX)
    }

    /// A set of presented UIDs as the replica's UIDs.
    pub fn to_replica(&self, set: &SequenceSet) -> SequenceSet {
        let mut singles = Vec::new();
        let mut ranges = Vec::new();
        let mut out = Vec::new();
        for sequence in set.0.as_ref() {
            match *sequence {
                Sequence::Single(SeqOrUid::Asterisk) => out.push(sequence.clone()),
                Sequence::Single(SeqOrUid::Value(v)) => singles.extend(self.exact_replica(v.get())),
                Sequence::Range(a, b) => {
                    let (low, high) = ordered(a, b);
                    ranges.push((low, high.unwrap_or(u32::MAX)));
                    // The part above the listed messages, shifted back.
                    let tail_low = (i64::from(low) - self.offset).max(i64::from(self.last_r) + 1);
                    let tail_low = u32::try_from(tail_low).unwrap_or(u32::MAX);
                    match high {
                        None => out.push(Sequence::Range(value(tail_low), SeqOrUid::Asterisk)),
                        Some(high) => {
                            let tail_high = i64::from(high) - self.offset;
                            if tail_high >= i64::from(tail_low) {
                                let tail_high = u32::try_from(tail_high).unwrap_or(u32::MAX);
                                out.push(Sequence::Range(value(tail_low), value(tail_high)));
                            }
                        }
                    }
                }
            }
        }
        for (low, high) in merged(ranges) {
            singles.extend(self.p2r.range(low..=high).map(|(_, &r)| r));
        }
        out.extend(runs(singles));
        set_of(out)
    }

    /// A set of replica UIDs as the client sees them (replica UIDs that name no message
    /// the client could know are dropped).
    pub fn to_presented(&self, set: &SequenceSet) -> SequenceSet {
        let mut singles = Vec::new();
        let mut out = Vec::new();
        for sequence in set.0.as_ref() {
            match *sequence {
                Sequence::Single(SeqOrUid::Asterisk) => out.push(sequence.clone()),
                Sequence::Single(SeqOrUid::Value(r)) => singles.extend(self.presented(r.get())),
                Sequence::Range(a, b) => {
                    let (low, high) = ordered(a, b);
                    let explicit_high = high.unwrap_or(u32::MAX).min(self.last_r);
                    if low <= explicit_high {
                        singles.extend(self.r2p.range(low..=explicit_high).map(|(_, &p)| p));
                    }
                    let tail_low = low.max(self.last_r.saturating_add(1));
                    let Some(p_low) = self.presented(tail_low) else {
                        continue;
                    };
                    match high {
                        None => out.push(Sequence::Range(value(p_low), SeqOrUid::Asterisk)),
                        Some(high) if high >= tail_low => {
                            if let Some(p_high) = self.presented(high) {
                                out.push(Sequence::Range(value(p_low), value(p_high)));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        out.extend(runs(singles));
        set_of(out)
    }

    /// The replica UID of presented UID `v`, if it names a message.
    pub fn exact_replica(&self, v: u32) -> Option<u32> {
        if let Some(&r) = self.p2r.get(&v) {
            return Some(r);
        }
        let tail = i64::from(v) - self.offset;
        (tail > i64::from(self.last_r))
            .then(|| u32::try_from(tail).ok())
            .flatten()
    }
}

/// Inclusive ranges as the fewest that cover the same numbers: a client's set may name
/// one range many times, and each number is looked up once.
pub fn merged(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match out.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => out.push((low, high)),
        }
    }
    out
}

/// Sorted, deduplicated values as ranges of consecutive numbers.
pub fn runs(mut values: Vec<u32>) -> Vec<Sequence> {
    values.sort_unstable();
    values.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    while at < values.len() {
        let start = values[at];
        let mut end = start;
        while at + 1 < values.len() && values[at + 1] == end + 1 {
            at += 1;
            end += 1;
        }
        out.push(if start == end {
            Sequence::Single(value(start))
        } else {
            Sequence::Range(value(start), value(end))
        });
        at += 1;
    }
    out
}

/// Pairs of (replica UID, primary UID) for messages with the same identity, in replica
/// order: by trace id first, then by Message-ID and size in UID order.
fn pair_up(catalogue: &Catalogue, replica: &[Known]) -> Vec<(u32, u32)> {
    let mut by_trace: HashMap<&str, u32> = HashMap::new();
    let mut by_id: HashMap<(&str, u64), VecDeque<u32>> = HashMap::new();
    for known in catalogue.messages.values() {
        let Identity {
            trace,
            message_id,
            size,
        } = &known.identity;
        if let Some(trace) = trace {
            by_trace.insert(trace.as_str(), known.uid);
        } else if let Some(id) = message_id {
            by_id
                .entry((id.as_str(), *size))
                .or_default()
                .push_back(known.uid);
        }
    }
    let mut pairs = Vec::new();
    for known in replica {
        let identity = &known.identity;
        let found = match (&identity.trace, &identity.message_id) {
            (Some(trace), _) => by_trace.remove(trace.as_str()),
            (None, Some(id)) => by_id
                .get_mut(&(id.as_str(), identity.size))
                .and_then(VecDeque::pop_front),
            (None, None) => None,
        };
        if let Some(p) = found {
            pairs.push((known.uid, p));
        }
    }
    pairs.sort_unstable();
    pairs
}

pub fn value(n: u32) -> SeqOrUid {
    SeqOrUid::Value(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

/// (low, high) with `None` for `*` as the high end.
pub fn ordered(a: SeqOrUid, b: SeqOrUid) -> (u32, Option<u32>) {
    match (a, b) {
        (SeqOrUid::Value(a), SeqOrUid::Value(b)) => {
            (a.get().min(b.get()), Some(a.get().max(b.get())))
        }
        (SeqOrUid::Value(v), SeqOrUid::Asterisk) | (SeqOrUid::Asterisk, SeqOrUid::Value(v)) => {
            (v.get(), None)
        }
        (SeqOrUid::Asterisk, SeqOrUid::Asterisk) => (u32::MAX, None),
    }
}

/// A UID that names no message: servers hand UIDs out from 1 upwards, and `u32::MAX`
/// itself would be written as `*`.
const NO_MESSAGE: u32 = u32::MAX - 1;

/// A set from its parts; [`NO_MESSAGE`] when there are none.
pub fn set_of(parts: Vec<Sequence>) -> SequenceSet {
    match parts.try_into() {
        Ok(parts) => SequenceSet(parts),
        Err(_) => SequenceSet(
            vec![Sequence::Single(value(NO_MESSAGE))]
                .try_into()
                .unwrap_or_else(|_| unreachable!("a one-element vector is not empty")),
        ),
    }
}

#[cfg(test)]
#[path = "uidmap_tests.rs"]
mod tests;
