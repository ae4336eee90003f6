//! Tamper check over the whole journal.
//!
//! Recomputes every body hash and every chain link from genesis, the same
//! computation an external auditor would do from the documented formula, and
//! stops at the first record that does not check out (everything after it
//! links to a broken link, so later results would say nothing new).

use serde::{Deserialize, Serialize};

use crate::codec::{decode, key_seq, seq_key};
use crate::error::JournalError;
use crate::record::Seq;
use crate::store::Journal;

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
        for item in self.inner.trees.records.range(..=seq_key(head)) {
            let (k, v) = item?;
            let Some(seq) = key_seq(&k) else {
                report.first_broken = Some((expected, "malformed record key".into()));
                return Ok(report);
            };
            if seq != expected {
                report.first_broken = Some((expected, format!("record missing (next is {seq})")));
                return Ok(report);
            }
            match check(seq, &v, &prev_chain) {
                Ok((chain, body_len)) => {
                    prev_chain = chain;
                    report.records_checked += 1;
                    report.bytes += v.len() as u64;
                    report.body_bytes += body_len;
                    if report.records_checked.is_multiple_of(PROGRESS_EVERY) {
                        progress(&report);
                    }
                }
                Err(reason) => {
                    report.first_broken = Some((seq, reason));
                    return Ok(report);
                }
            }
            expected += 1;
        }
        if expected <= head {
            report.first_broken = Some((expected, "record missing (end of journal)".into()));
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

/// Checks one record; returns its chain and raw body length, or why not.
fn check(seq: Seq, value: &[u8], prev_chain: &[u8; 32]) -> Result<([u8; 32], u64), String> {
    let stored = decode(seq, value).map_err(|e| reason(&e))?;
    if stored.seq != seq {
        return Err(format!(
            "stored under seq {seq} but claims seq {}",
            stored.seq
        ));
    }
    if &stored.prev_chain != prev_chain {
        return Err("prev_chain does not match the previous record's chain".into());
    }
    stored.raw_body().map_err(|e| reason(&e))?;
    if stored.expected_chain(prev_chain) != stored.chain {
        return Err("chain hash mismatch (record content altered)".into());
    }
    Ok((stored.chain, stored.body_len))
}

fn reason(e: &JournalError) -> String {
    match e {
        JournalError::Corrupt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
