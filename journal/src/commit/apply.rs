//! Writing a sealed batch's records and derived entries, and undoing them.

use super::{Batch, WriterState};
use crate::codec::{Prepared, seq_key};
use crate::error::JournalError;
use crate::index::{self, Index};
use crate::record::Seq;
use crate::recovery::write_indexed_through;
use crate::state::DeliveryState;

/// A record of the current batch, sealed at its seq.
pub(super) struct Sealed {
    pub(super) seq: Seq,
    time_ms: u64,
    is_message: bool,
    value: Vec<u8>,
    entries: Vec<(Index, Vec<u8>)>,
}

impl Sealed {
    /// Links `rec` in at `seq` after `prev_chain`; also returns its chain.
    pub(super) fn new(
        rec: &Prepared,
        seq: Seq,
        prev_chain: [u8; 32],
    ) -> Result<(Sealed, [u8; 32]), JournalError> {
        let (chain, value) = rec.seal(seq, prev_chain)?;
        let sealed = Sealed {
            seq,
            time_ms: rec.time_ms,
            is_message: rec.header.needs_delivery(),
            value,
            entries: index::entries(seq, rec.time_ms, &rec.header),
        };
        Ok((sealed, chain))
    }
}

impl WriterState {
    /// Records first, then what is derived from them (the caller writes the
    /// watermark last), so a crash anywhere leaves records that recovery
    /// re-indexes.
    pub(super) fn write(&self, records: &[Sealed]) -> Result<(), JournalError> {
        let trees = &self.inner.trees;
        for r in records {
            trees.records.insert(seq_key(r.seq), r.value.as_slice())?;
        }
        for r in records {
            trees.insert_index(&r.entries)?;
            if r.is_message {
                // Unconditional: a seq reused after a rollback starts afresh.
                trees.write_state(r.seq, &DeliveryState::pending(r.time_ms))?;
            }
        }
        Ok(())
    }

    /// Undoes the batch `records` (everything after `durable`) and rewinds
    /// the chain end. A failure to undo poisons the journal instead: the
    /// waiters get the error that started this.
    pub(super) fn roll_back(&mut self, batch: &Batch, cause: &JournalError) {
        let (durable, records) = (batch.durable, &batch.records);
        let trees = &self.inner.trees;
        let undone = (|| {
            // Watermark first: a crash mid-rollback leaves a gap-free prefix
            // of records past it, which recovery re-indexes.
            write_indexed_through(trees, durable)?;
            for r in records.iter().rev() {
                trees.remove_index(&r.entries)?;
                trees.remove_state(r.seq)?;
                trees.records.remove(seq_key(r.seq))?;
            }
            Ok::<_, JournalError>(())
        })();
        match undone {
            Ok(()) => {
                self.last_seq = durable;
                self.last_chain = batch.durable_chain;
            }
            Err(e) => {
                tracing::error!(error = %e, "journal rollback failed; journal poisoned");
                self.poisoned = Some(cause.replay());
            }
        }
    }
}
