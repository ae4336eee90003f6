//! UID continuity: after a failover a session on the replica shows the client the
//! UIDVALIDITY and UIDs it knew from the primary, so a caching client re-downloads nothing.
//!
//! [`Translation::build`] pairs the primary's messages (as levee last saw them, a
//! [`Catalogue`]) with the replica's by [`Identity`], keeps the longest run of pairs in
//! which both UID orders agree (IMAP UIDs ascend with sequence numbers, so a pair out of
//! order cannot keep its UID), gives replica messages the primary never had UIDs the client
//! has not seen, and shifts every later replica UID by one offset. Pure: no IO.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// How a session on the replica presents the primary's UIDs. "Presented" UIDs are the
/// ones the client sees; "replica" UIDs are the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub primary_validity: u32,
    pub replica_validity: u32,
    r2p: BTreeMap<u32, u32>,
    p2r: BTreeMap<u32, u32>,
    /// Replica UIDs above this are presented as `uid + offset`.
    last_r: u32,
    offset: i64,
    /// UIDs the client knew from the primary whose messages the replica does not have.
    pub missing: Vec<u32>,
    /// Messages that keep their UID.
    pub kept: usize,
}

impl Translation {
    /// Pairs `catalogue` with the replica's messages. `None` when the replica has messages
    /// the client has not seen that cannot be slotted between the ones it has without
    /// reusing a UID; the session then shows the replica's own UIDs (and UIDVALIDITY).
    pub fn build(
        catalogue: &Catalogue,
        replica: &[Known],
        replica_validity: u32,
    ) -> Option<Translation> {
        let pairs = longest_ordered(pair_up(catalogue, replica));
        let kept = pairs.len();
        let mut r2p: BTreeMap<u32, u32> = pairs.iter().copied().collect();
        let last_r = pairs.last().map_or(0, |&(r, _)| r);
        // Replica messages below the last kept pair go into the gaps between kept UIDs,
        // never onto a UID the client knows.
        let mut bounds = vec![(0u32, 0u32)];
        bounds.extend(pairs.iter().copied());
        for window in bounds.windows(2) {
            let ((r1, p1), (r2, p2)) = (window[0], window[1]);
            let mut free = (p1 + 1..p2).filter(|p| !catalogue.messages.contains_key(p));
            for known in replica.iter().filter(|k| k.uid > r1 && k.uid < r2) {
                r2p.insert(known.uid, free.next()?);
            }
        }
        let last_p = pairs.last().map_or(0, |&(_, p)| p);
        let known_max = catalogue.messages.keys().next_back().copied().unwrap_or(0);
        let base = u64::from(catalogue.uidnext)
            .max(u64::from(known_max) + 1)
            .max(u64::from(last_p) + 1);
        let offset = base as i64 - (i64::from(last_r) + 1);
        let p2r = r2p.iter().map(|(&r, &p)| (p, r)).collect();
        let kept_p: std::collections::HashSet<u32> = pairs.iter().map(|&(_, p)| p).collect();
        let missing = catalogue
            .messages
            .keys()
            .copied()
            .filter(|p| !kept_p.contains(p))
            .collect();
        Some(Translation {
            primary_validity: catalogue.uidvalidity,
            replica_validity,
            r2p,
            p2r,
            last_r,
            offset,
            missing,
            kept,
        })
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
        let above = self.r2p.values().next_back().map_or(1, |p| p + 1);
        self.presented(replica_uidnext.max(self.last_r + 1))
            .unwrap_or(u32::MAX)
            .max(above)
    }

    /// The lowest replica UID presented as `v` or above.
    fn replica_at_or_above(&self, v: u32) -> Option<u32> {
        let explicit = self.p2r.range(v..).next().map(|(_, &r)| r);
        let tail = i64::from(v) - self.offset;
        let tail = u32::try_from(tail.max(i64::from(self.last_r) + 1)).ok();
        explicit.filter(|&r| r <= self.last_r).or(tail)
    }

    /// The highest replica UID presented as `v` or below.
    fn replica_at_or_below(&self, v: u32) -> Option<u32> {
        let tail = i64::from(v) - self.offset;
        if tail > i64::from(self.last_r) {
            return u32::try_from(tail).ok();
        }
        self.p2r
            .range(..=v)
            .next_back()
            .map(|(_, &r)| r)
            .filter(|&r| r <= self.last_r)
    }

    /// A set of presented UIDs as the replica's UIDs.
    pub fn to_replica(&self, set: &SequenceSet) -> SequenceSet {
        let mut out = Vec::new();
        for sequence in set.0.as_ref() {
            match *sequence {
                Sequence::Single(SeqOrUid::Asterisk) => out.push(sequence.clone()),
                Sequence::Single(SeqOrUid::Value(v)) => {
                    if let Some(r) = self.exact_replica(v.get()) {
                        out.push(Sequence::Single(value(r)));
                    }
                }
                Sequence::Range(a, b) => {
                    let (low, high) = ordered(a, b);
                    let Some(lo) = self.replica_at_or_above(low) else {
                        continue;
                    };
                    match high {
                        None => out.push(Sequence::Range(value(lo), SeqOrUid::Asterisk)),
                        Some(high) => {
                            if let Some(hi) = self.replica_at_or_below(high)
                                && hi >= lo
                            {
                                out.push(Sequence::Range(value(lo), value(hi)));
                            }
                        }
                    }
                }
            }
        }
        set_of(out)
    }

    /// A set of replica UIDs as the client sees them (replica UIDs that name no message
    /// the client could know are dropped).
    pub fn to_presented(&self, set: &SequenceSet) -> SequenceSet {
        let mut out = Vec::new();
        for sequence in set.0.as_ref() {
            match *sequence {
                Sequence::Single(SeqOrUid::Asterisk) => out.push(sequence.clone()),
                Sequence::Single(SeqOrUid::Value(r)) => {
                    if let Some(p) = self.presented(r.get()) {
                        out.push(Sequence::Single(value(p)));
                    }
                }
                Sequence::Range(a, b) => {
                    let (low, high) = ordered(a, b);
                    let lo = self
                        .r2p
                        .range(low..)
                        .next()
                        .map(|(&r, _)| r)
                        .filter(|&r| r <= self.last_r)
                        .unwrap_or(low.max(self.last_r + 1));
                    let hi = high.map(|h| {
                        if h > self.last_r {
                            h
                        } else {
                            self.r2p.range(..=h).next_back().map_or(0, |(&r, _)| r)
                        }
                    });
                    let (Some(p_lo), hi) = (self.presented(lo), hi) else {
                        continue;
                    };
                    match hi {
                        None => out.push(Sequence::Range(value(p_lo), SeqOrUid::Asterisk)),
                        Some(hi) if hi >= lo => {
                            if let Some(p_hi) = self.presented(hi) {
                                out.push(Sequence::Range(value(p_lo), value(p_hi)));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        set_of(out)
    }

    fn exact_replica(&self, v: u32) -> Option<u32> {
        if let Some(&r) = self.p2r.get(&v)
            && r <= self.last_r
        {
            return Some(r);
        }
        let tail = i64::from(v) - self.offset;
        (tail > i64::from(self.last_r))
            .then(|| u32::try_from(tail).ok())
            .flatten()
    }
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

/// The longest subsequence of `pairs` (sorted by replica UID) whose primary UIDs ascend.
fn longest_ordered(pairs: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    // Patience sorting: tails[k] = index of the smallest last element of a run of k+1.
    let mut tails: Vec<usize> = Vec::new();
    let mut before: Vec<Option<usize>> = vec![None; pairs.len()];
    for (i, &(_, p)) in pairs.iter().enumerate() {
        let k = tails.partition_point(|&t| pairs[t].1 < p);
        before[i] = k.checked_sub(1).map(|k| tails[k]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut at = tails.last().copied();
    while let Some(i) = at {
        out.push(pairs[i]);
        at = before[i];
    }
    out.reverse();
    out
}

fn value(n: u32) -> SeqOrUid {
    SeqOrUid::Value(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

/// (low, high) with `None` for `*` as the high end.
fn ordered(a: SeqOrUid, b: SeqOrUid) -> (u32, Option<u32>) {
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
fn set_of(parts: Vec<Sequence>) -> SequenceSet {
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
