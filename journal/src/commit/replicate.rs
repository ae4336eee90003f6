//! Appending another journal's records verbatim: the replica side of
//! replication.
//!
//! [`Journal::append_replicated`] hashes (and maybe compresses) the offered
//! bodies on the calling task — on the blocking pool when the batch carries
//! more than [`INLINE_PREPARE_MAX`] body bytes — and sends the whole batch to
//! the writer thread as one `Replicate` job. The storage encoding is this
//! journal's own choice: the chain covers the raw body's length and hash
//! only, so it does not depend on it.
//!
//! The writer checks the batch against the end of its chain — the last
//! *sealed* record, which is the durable head unless appends staged earlier
//! in the same group precede it — and seals the records at the seqs they
//! carry, recomputing every chain hash. Only if every record fits does the
//! batch join the group commit, as a whole; otherwise the job alone is
//! refused with [`JournalError::Mismatch`] naming the first bad record,
//! before anything is written. From there on the batch is committed, rolled
//! back and answered exactly like appends.

use super::{INLINE_PREPARE_MAX, Job, Sealed, WriterState};
use crate::codec::{self, Prepared};
use crate::error::JournalError;
use crate::metrics as m;
use crate::record::{
    BODY_HASH_MISMATCH, CHAIN_MISMATCH, NewRecord, PREV_CHAIN_MISMATCH, Record, RecordKind, Seq,
    sha256,
};
use crate::seal::BodyKey;
use crate::store::Journal;

/// An offered record, body hashed and encoded for storage.
#[derive(Debug)]
pub(crate) struct Offered {
    seq: Seq,
    prev_chain: [u8; 32],
    chain: [u8; 32],
    /// False when the body does not hash to the claimed `body_sha256`.
    body_ok: bool,
    rec: Prepared,
}

/// Hashes and encodes the batch, stopping after the first record whose body
/// does not match its hash: the writer refuses the batch at or before it.
fn prepare_all(
    records: Vec<Record>,
    compress_min_bytes: usize,
    key: Option<&BodyKey>,
) -> Vec<Offered> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let body_ok = sha256(r.kind.body()) == r.body_sha256;
        let new = NewRecord {
            time_ms: r.time_ms,
            kind: r.kind,
        };
        out.push(Offered {
            seq: r.seq,
            prev_chain: r.prev_chain,
            chain: r.chain,
            body_ok,
            rec: codec::prepare_hashed(new, r.body_sha256, compress_min_bytes, key),
        });
        if !body_ok {
            break;
        }
    }
    out
}

impl Journal {
    /// Appends records produced by another journal, verbatim: same seq,
    /// time_ms, kind, body_sha256, prev_chain and chain.
    ///
    /// All or nothing per call: the batch must start at `head() + 1` and be
    /// consecutive, the first record's `prev_chain` must be
    /// [`last_chain`](Journal::last_chain), each later one's the chain of
    /// the record before it, every `body_sha256` must be the SHA-256 of the
    /// body and every `chain` what the documented formula gives. Otherwise
    /// nothing of the batch is written and [`JournalError::Mismatch`] names
    /// the first bad record. An empty batch returns `Ok(head())`.
    ///
    /// Goes through the same group commit as [`append`](Journal::append):
    /// durable on return, message records start Pending (and are listed by
    /// [`undelivered`](Journal::undelivered)), indexes are written. Returns
    /// the seq of the batch's last record, now the durable head unless
    /// local appends were committed after it in the same group.
    ///
    /// Local appends racing with this call take the seq the batch expects:
    /// whichever reaches the writer thread second is the one to fail (the
    /// batch with `Mismatch`) or to move (the append, to a later seq). The
    /// journal stays intact either way. A crash before the call returns may
    /// leave a prefix of the batch on disk, as it may leave unacknowledged
    /// appends; resume from `head() + 1`.
    pub async fn append_replicated(&self, records: Vec<Record>) -> Result<Seq, JournalError> {
        if records.is_empty() {
            return Ok(self.head());
        }
        self.inner.check_space()?;
        let count = records.len() as u64;
        let prunes = records.iter().any(
            |r| matches!(&r.kind, RecordKind::Audit(a) if a.action == crate::retention::PRUNE),
        );
        let body_bytes: usize = records.iter().map(|r| r.kind.body().len()).sum();
        let min = self.inner.opts.compress_min_bytes;
        let offered = if body_bytes <= INLINE_PREPARE_MAX {
            prepare_all(records, min, self.key())
        } else {
            let key = self.inner.opts.body_key.clone();
            tokio::task::spawn_blocking(move || prepare_all(records, min, key.as_deref()))
                .await
                .map_err(|_| JournalError::Closed)?
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.submit(Job::Replicate { offered, reply })?;
        let last = answer.await.map_err(|_| JournalError::Closed)??;
        if prunes {
            // The primary pruned: remove the same records here.
            let journal = self.clone();
            tokio::task::spawn_blocking(move || journal.sweep_pruned())
                .await
                .map_err(|_| JournalError::Closed)??;
        }
        metrics::counter!(m::REPLICATED_TOTAL).increment(count);
        metrics::counter!(m::BYTES_TOTAL).increment(body_bytes as u64);
        Ok(last)
    }
}

impl WriterState {
    /// Seals a replicated batch after the end of the chain and advances it,
    /// or refuses the whole batch and leaves the chain end as it was.
    pub(super) fn link_replicated(
        &mut self,
        offered: Vec<Offered>,
    ) -> Result<Vec<Sealed>, JournalError> {
        let (mut seq, mut chain) = (self.last_seq, self.last_chain);
        let mut sealed = Vec::with_capacity(offered.len());
        for o in offered {
            let mismatch = |reason: String| JournalError::Mismatch { seq: o.seq, reason };
            if o.seq != seq + 1 {
                return Err(mismatch(format!(
                    "expected seq {} (records must be consecutive from head + 1)",
                    seq + 1
                )));
            }
            if o.prev_chain != chain {
                return Err(mismatch(PREV_CHAIN_MISMATCH.into()));
            }
            if !o.body_ok {
                return Err(mismatch(BODY_HASH_MISMATCH.into()));
            }
            let (record, computed) = Sealed::new(&o.rec, o.seq, chain)?;
            if computed != o.chain {
                return Err(mismatch(CHAIN_MISMATCH.into()));
            }
            sealed.push(record);
            (seq, chain) = (o.seq, computed);
        }
        (self.last_seq, self.last_chain) = (seq, chain);
        Ok(sealed)
    }
}
