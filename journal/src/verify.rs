//! Tamper check over the whole journal.
//!
//! Recomputes every body hash and every chain link from genesis, the same
//! computation an external auditor would do from the documented formula, and
//! stops at the first record that does not check out (everything after it
//! links to a broken link, so later results would say nothing new).
//!
//! Pruned runs are crossed by their checkpoints (`retention.rs`): the run must start
//! where the chain so far ends, the walk goes on from the checkpoint's chain hash, and
//! a `journal-prune` record later in the chain must list exactly that checkpoint.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, seq_key};
use crate::error::JournalError;
use crate::record::{RecordKind, Seq};
use crate::retention::{PRUNE, PruneDetail, PrunedRange};
use crate::seal::BodyKey;
use crate::store::Journal;
use std::collections::HashSet;

/// How often [`Journal::verify_with`] reports progress, in records.
pub const PROGRESS_EVERY: u64 = 4096;

/// Outcome of [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records that passed every check.
    pub records_checked: u64,
    /// Stored bytes read (encoded values, compressed bodies included).
    pub bytes: u64,
    /// Raw body bytes hashed.
    pub body_bytes: u64,
    /// Records removed by retention, crossed by their checkpoints.
    #[serde(default)]
    pub records_pruned: u64,
    /// The durable head the walk went up to.
    pub head: Seq,
    /// The first record that failed a check, and why.
    pub first_broken: Option<(Seq, String)>,
}

impl VerifyReport {
    /// True when nothing was found broken.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

impl Journal {
    /// Walks seq 1..=head checking contiguity, each record's body hash and
    /// its chain link. Tampering is reported in the result, not as an error;
    /// errors mean the walk itself could not be performed.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        self.verify_with(|_| {})
    }

    /// [`Journal::verify`], calling `progress` with the report so far every
    /// [`PROGRESS_EVERY`] records.
    pub fn verify_with(
        &self,
        mut progress: impl FnMut(&VerifyReport),
    ) -> Result<VerifyReport, JournalError> {
        let head = self.head();
        let mut report = VerifyReport {
            head,
            ..VerifyReport::default()
        };
        let mut prev_chain = [0u8; 32];
        let mut expected: Seq = 1;
        if head == 0 {
            return Ok(report);
        }
        // Checkpoints crossed, and those the chain's prune records vouch for.
        let mut crossed: Vec<PrunedRange> = Vec::new();
        let mut vouched: HashSet<(Seq, Seq, [u8; 32], [u8; 32])> = HashSet::new();
        // Each record is checked on its own on the workers; the links between records
        // are checked here, in seq order.
        let key = self.key();
        let mut broken: Option<(Seq, String)> = None;
        let walked = crate::scan::ordered(
            self.inner.trees.records.range(..=seq_key(head)),
            |seq, value| (seq, value.len() as u64, check(seq, value, key)),
            |(seq, stored_len, checked)| {
                if let Err(reason) =
                    self.cross_pruned(&mut expected, seq, &mut prev_chain, &mut crossed)
                {
                    broken = Some((expected, reason));
                    return false;
                }
                let checked = match checked {
                    Ok(checked) if checked.prev_chain == prev_chain => checked,
                    Ok(_) => {
                        let why = "prev_chain does not match the previous record's chain";
                        broken = Some((seq, why.into()));
                        return false;
                    }
                    Err(reason) => {
                        broken = Some((seq, reason));
                        return false;
                    }
                };
                prev_chain = checked.chain;
                vouched.extend(checked.vouches);
                report.records_checked += 1;
                report.bytes += stored_len;
                report.body_bytes += checked.body_len;
                if report.records_checked.is_multiple_of(PROGRESS_EVERY) {
                    progress(&report);
                }
                expected += 1;
                true
            },
        );
        match walked {
            Ok(()) => {}
            Err(JournalError::Corrupt { reason, .. }) => broken = Some((expected, reason)),
            Err(err) => return Err(err),
        }
        if let Some(broken) = broken {
            report.first_broken = Some(broken);
            return Ok(report);
        }
        if expected <= head {
            report.first_broken = Some((expected, "record missing (end of journal)".into()));
        }
        report.records_pruned = crossed.iter().map(|r| r.last + 1 - r.first).sum();
        if let Some(r) =
            (crossed.iter()).find(|r| !vouched.contains(&(r.first, r.last, r.prev_chain, r.chain)))
        {
            report.first_broken = Some((
                r.first,
                format!(
                    "records {}..={} are missing and no prune record in the chain accounts for them",
                    r.first, r.last
                ),
            ));
        }
        tracing::info!(
            records = report.records_checked,
            bytes = report.bytes,
            intact = report.is_intact(),
            "journal verified"
        );
        Ok(report)
    }
}

impl Journal {
    /// Moves `expected` (and the chain) across the pruned runs that end right before
    /// `seq`, or says why the gap is not a pruned run.
    fn cross_pruned(
        &self,
        expected: &mut Seq,
        seq: Seq,
        prev_chain: &mut [u8; 32],
        crossed: &mut Vec<PrunedRange>,
    ) -> Result<(), String> {
        while *expected < seq {
            let range = self
                .pruned_at(*expected)
                .map_err(|e| format!("reading pruned ranges: {e}"))?;
            let Some(range) = range.filter(|r| r.last < seq) else {
                return Err(format!("record missing (next is {seq})"));
            };
            if range.prev_chain != *prev_chain {
                return Err(format!(
                    "pruned records {}..={} did not follow the chain here",
                    range.first, range.last
                ));
            }
            *prev_chain = range.chain;
            *expected = range.last + 1;
            crossed.push(range);
        }
        Ok(())
    }
}

/// What one record contributed to the walk.
struct Checked {
    /// The chain hash the record says it follows (checked against its predecessor's).
    prev_chain: [u8; 32],
    chain: [u8; 32],
    body_len: u64,
    /// The checkpoints a prune record lists.
    vouches: Vec<(Seq, Seq, [u8; 32], [u8; 32])>,
}

/// Checks one record on its own (its link to the one before is the caller's), or says
/// why it fails.
fn check(seq: Seq, value: &[u8], key: Option<&BodyKey>) -> Result<Checked, String> {
    let stored = decode(seq, value).map_err(|e| reason(&e))?;
    if stored.seq != seq {
        return Err(format!(
            "stored under seq {seq} but claims seq {}",
            stored.seq
        ));
    }
    stored.raw_body(key).map_err(|e| reason(&e))?;
    if stored.expected_chain(&stored.prev_chain) != stored.chain {
        return Err("chain hash mismatch (record content altered)".into());
    }
    let vouches = match &stored.header {
        RecordKind::Audit(audit) if audit.action == PRUNE => {
            let detail: PruneDetail = serde_json::from_str(&audit.detail)
                .map_err(|e| format!("prune record does not parse: {e}"))?;
            (detail.checkpoints.iter())
                .filter_map(|cp| PrunedRange::from_key(&cp.key()?))
                .map(|r| (r.first, r.last, r.prev_chain, r.chain))
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(Checked {
        prev_chain: stored.prev_chain,
        chain: stored.chain,
        body_len: stored.body_len,
        vouches,
    })
}

fn reason(e: &JournalError) -> String {
    match e {
        JournalError::Corrupt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
