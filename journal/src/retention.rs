//! Legal holds, and what pruning leaves behind: both are audit records in the chain.
//!
//! A hold (`journal-hold`) names the records it covers as seq ranges in its detail
//! (JSON); its id is the seq of that audit record. A release (`journal-release`) names
//! the hold. A prune (`journal-prune`, see `prune.rs`) lists checkpoints: for each run
//! of consecutive records it removed, the first and last seq and the chain hashes on
//! either side of the run. The trees that answer "is this record held?" and "which
//! ranges were pruned?" are derived from these records by the indexer, like the search
//! indexes: the replica, which receives the same records, ends up with the same holds
//! and prunes the same records, and nothing but the chain itself can make them.
//!
//! Verification walks across a pruned run by its checkpoint: the record after the run
//! must link to the checkpoint's `chain`, the checkpoint's `prev_chain` must be the
//! chain of the record before the run, and the prune record that vouches for it is
//! itself a link of the chain, so neither the checkpoint nor the remaining records can
//! be changed unnoticed.

use serde::{Deserialize, Serialize};

use crate::error::JournalError;
use crate::index::{Index, key};
use crate::record::{AuditRecord, NewRecord, RecordKind, Seq};
use crate::store::Journal;

/// Audit action of a legal hold.
pub const HOLD: &str = "journal-hold";
/// Audit action that lifts a hold.
pub const RELEASE: &str = "journal-release";
/// Audit action of a prune.
pub const PRUNE: &str = "journal-prune";

/// The detail of a `journal-hold` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldDetail {
    /// Why (a matter, a case number), as the officer gave it.
    pub reason: String,
    /// The selection that found the records, in words.
    pub selection: String,
    /// Records held, as inclusive seq ranges, ascending.
    pub ranges: Vec<(Seq, Seq)>,
    /// How many records that is.
    pub count: u64,
}

/// The detail of a `journal-release` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDetail {
    /// The hold lifted (the seq of its record).
    pub hold: Seq,
    pub reason: String,
}

/// One pruned run of consecutive records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub first: Seq,
    pub last: Seq,
    /// Chain hash of record `first - 1` (hex), which record `first` linked to.
    pub prev_chain: String,
    /// Chain hash of record `last` (hex), which record `last + 1` links to.
    pub chain: String,
    /// Raw body bytes removed.
    pub bytes: u64,
}

/// The detail of a `journal-prune` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneDetail {
    /// Records accepted before this instant (ms since the Unix epoch) were due.
    pub before_ms: u64,
    pub count: u64,
    pub bytes: u64,
    pub checkpoints: Vec<Checkpoint>,
}

/// A hold, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The seq of the hold's record.
    pub id: Seq,
    pub time_ms: u64,
    pub actor: String,
    pub reason: String,
    pub selection: String,
    pub count: u64,
    pub released: bool,
}

impl Checkpoint {
    /// The `idx_pruned` key: `first_be || last_be || prev_chain || chain`.
    pub(crate) fn key(&self) -> Option<Vec<u8>> {
        let mut k = Vec::with_capacity(80);
        k.extend_from_slice(&self.first.to_be_bytes());
        k.extend_from_slice(&self.last.to_be_bytes());
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.prev_chain, &mut hash).ok()?;
        k.extend_from_slice(&hash);
        hex::decode_to_slice(&self.chain, &mut hash).ok()?;
        k.extend_from_slice(&hash);
        Some(k)
    }
}

/// A pruned range read back from `idx_pruned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrunedRange {
    pub first: Seq,
    pub last: Seq,
    pub prev_chain: [u8; 32],
    pub chain: [u8; 32],
}

impl PrunedRange {
    pub(crate) fn from_key(k: &[u8]) -> Option<PrunedRange> {
        if k.len() != 80 {
            return None;
        }
        let seq = |at: usize| Some(u64::from_be_bytes(k[at..at + 8].try_into().ok()?));
        Some(PrunedRange {
            first: seq(0)?,
            last: seq(8)?,
            prev_chain: k[16..48].try_into().ok()?,
            chain: k[48..80].try_into().ok()?,
        })
    }
}

/// The derived entries of audit record `seq` (none for other actions, or a detail that
/// does not parse, which no levee writes).
pub(crate) fn entries(seq: Seq, audit: &AuditRecord) -> Vec<(Index, Vec<u8>)> {
    let mut out = Vec::new();
    match audit.action.as_str() {
        HOLD => {
            let Ok(detail) = serde_json::from_str::<HoldDetail>(&audit.detail) else {
                tracing::warn!(seq, "a hold record whose detail does not parse");
                return out;
            };
            out.push((Index::Holds, key(b"", seq)));
            for &(first, last) in &detail.ranges {
                for held in first..=last.min(seq) {
                    out.push((Index::Held, key(&held.to_be_bytes(), seq)));
                }
            }
        }
        RELEASE => match serde_json::from_str::<ReleaseDetail>(&audit.detail) {
            Ok(detail) => out.push((Index::Released, key(b"", detail.hold))),
            Err(_) => tracing::warn!(seq, "a release record whose detail does not parse"),
        },
        PRUNE => match serde_json::from_str::<PruneDetail>(&audit.detail) {
            Ok(detail) => out.extend(
                (detail.checkpoints.iter())
                    .filter_map(Checkpoint::key)
                    .map(|k| (Index::Pruned, k)),
            ),
            Err(_) => tracing::warn!(seq, "a prune record whose detail does not parse"),
        },
        _ => {}
    }
    out
}

/// `seqs` (ascending) as inclusive ranges.
pub(crate) fn ranges(seqs: &[Seq]) -> Vec<(Seq, Seq)> {
    let mut out: Vec<(Seq, Seq)> = Vec::new();
    for &seq in seqs {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

fn hold_be(k: &[u8]) -> Option<Seq> {
    Some(u64::from_be_bytes(
        k.get(k.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}

impl Journal {
    /// Whether record `seq` is under a hold not yet released.
    pub fn is_held(&self, seq: Seq) -> Result<bool, JournalError> {
        let trees = &self.inner.trees;
        let mut prefix = seq.to_be_bytes().to_vec();
        prefix.push(0);
        for item in trees.idx_held.scan_prefix(&prefix) {
            let (k, _) = item?;
            if let Some(hold) = hold_be(&k)
                && !trees.idx_released.contains_key(key(b"", hold))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Places a legal hold on `seqs` (durable records, ascending, no duplicates) and
    /// returns its id. `selection` says in words how they were chosen.
    pub async fn hold(
        &self,
        time_ms: u64,
        actor: String,
        reason: &str,
        selection: String,
        seqs: &[Seq],
    ) -> Result<Seq, JournalError> {
        if reason.trim().is_empty() {
            return Err(JournalError::Retention("a hold needs a reason".into()));
        }
        if seqs.is_empty() {
            return Err(JournalError::Retention(
                "the selection matches no record: nothing to hold".into(),
            ));
        }
        let head = self.head();
        if let Some(bad) = seqs.windows(2).find(|w| w[0] >= w[1]) {
            return Err(JournalError::Retention(format!(
                "seqs must ascend ({} then {})",
                bad[0], bad[1]
            )));
        }
        if let Some(&beyond) = seqs.iter().find(|&&s| s == 0 || s > head) {
            return Err(JournalError::NotFound(beyond));
        }
        // Under the lock, so that a prune cannot slip in between: records a prune removed
        // since the caller selected them are not held (nor counted).
        let _one = self.inner.retention_lock.lock().await;
        let mut stored = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if self
                .inner
                .trees
                .records
                .contains_key(crate::codec::seq_key(seq))?
            {
                stored.push(seq);
            }
        }
        if stored.is_empty() {
            return Err(JournalError::Retention(
                "every record of the selection has been pruned: nothing to hold".into(),
            ));
        }
        let detail = HoldDetail {
            reason: reason.trim().to_string(),
            selection,
            ranges: ranges(&stored),
            count: stored.len() as u64,
        };
        let appended = self.append(audit(time_ms, actor, HOLD, &detail)?).await?;
        Ok(appended.seq)
    }

    /// Lifts hold `hold`: its records may be pruned again (unless another hold has them).
    pub async fn release(
        &self,
        time_ms: u64,
        actor: String,
        hold: Seq,
        reason: &str,
    ) -> Result<(), JournalError> {
        if reason.trim().is_empty() {
            return Err(JournalError::Retention("a release needs a reason".into()));
        }
        let _one = self.inner.retention_lock.lock().await;
        let trees = &self.inner.trees;
        if !trees.idx_holds.contains_key(key(b"", hold))? {
            return Err(JournalError::Retention(format!("there is no hold {hold}")));
        }
        if trees.idx_released.contains_key(key(b"", hold))? {
            return Err(JournalError::Retention(format!(
                "hold {hold} is already released"
            )));
        }
        let detail = ReleaseDetail {
            hold,
            reason: reason.trim().to_string(),
        };
        self.append(audit(time_ms, actor, RELEASE, &detail)?)
            .await?;
        Ok(())
    }

    /// Every hold ever placed, oldest first.
    pub fn holds(&self) -> Result<Vec<Hold>, JournalError> {
        let trees = &self.inner.trees;
        let mut out = Vec::new();
        for item in trees.idx_holds.iter() {
            let (k, _) = item?;
            let Some(id) = hold_be(&k) else { continue };
            let Some(record) = self.get(id)? else {
                continue;
            };
            let RecordKind::Audit(audit) = &record.kind else {
                continue;
            };
            let Ok(detail) = serde_json::from_str::<HoldDetail>(&audit.detail) else {
                continue;
            };
            out.push(Hold {
                id,
                time_ms: record.time_ms,
                actor: audit.actor.clone(),
                reason: detail.reason,
                selection: detail.selection,
                count: detail.count,
                released: trees.idx_released.contains_key(key(b"", id))?,
            });
        }
        Ok(out)
    }

    /// The pruned range starting at `first`, if any.
    pub(crate) fn pruned_at(&self, first: Seq) -> Result<Option<PrunedRange>, JournalError> {
        let prefix = first.to_be_bytes();
        match self.inner.trees.idx_pruned.scan_prefix(prefix).next() {
            Some(item) => Ok(PrunedRange::from_key(&item?.0)),
            None => Ok(None),
        }
    }
}

/// An audit record whose detail is `detail` as JSON.
pub(crate) fn audit<T: Serialize>(
    time_ms: u64,
    actor: String,
    action: &str,
    detail: &T,
) -> Result<NewRecord, JournalError> {
    let detail = serde_json::to_string(detail)
        .map_err(|e| JournalError::Retention(format!("encoding the {action} record: {e}")))?;
    Ok(NewRecord::audit(time_ms, actor, action, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_become_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 7), (9, 10)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn checkpoint_keys_round_trip() {
        let cp = Checkpoint {
            first: 5,
            last: 9,
            prev_chain: hex::encode([1u8; 32]),
            chain: hex::encode([2u8; 32]),
            bytes: 10,
        };
        let range = PrunedRange::from_key(&cp.key().unwrap()).unwrap();
        assert_eq!((range.first, range.last), (5, 9));
        assert_eq!((range.prev_chain, range.chain), ([1; 32], [2; 32]));
        let bad = Checkpoint {
            chain: "zz".into(),
            ..cp
        };
        assert!(bad.key().is_none());
    }
}
