//! Bringing the journal back to a consistent state on open.
//!
//! A group commit writes its records first, then their index entries and
//! delivery states, then `meta/indexed_through` (once for the group; a
//! rollback lowers it before removing anything). A crash can cut that
//! sequence anywhere, so open re-applies the derived writes for every record past
//! `indexed_through` (they are idempotent) and checks that this tail is
//! gap-free and correctly chained before anything new is linked to it.

use crate::codec::{decode, key_seq, seq_key};
use crate::error::JournalError;
use crate::index;
use crate::record::Seq;
use crate::store::Trees;

pub(crate) const INDEXED_THROUGH: &[u8] = b"indexed_through";

/// Head and chain of the last record, where the next append links on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tip {
    pub head: Seq,
    pub chain: [u8; 32],
}

pub(crate) fn read_indexed_through(trees: &Trees) -> Result<Seq, JournalError> {
    match trees.meta.get(INDEXED_THROUGH)? {
        None => Ok(0),
        Some(v) => {
            key_seq(&v).ok_or_else(|| JournalError::corrupt(0, "malformed meta/indexed_through"))
        }
    }
}

pub(crate) fn write_indexed_through(trees: &Trees, seq: Seq) -> Result<(), JournalError> {
    trees.meta.insert(INDEXED_THROUGH, &seq_key(seq))?;
    Ok(())
}

pub(crate) fn recover(trees: &Trees) -> Result<Tip, JournalError> {
    let Some((last_key, _)) = trees.records.last()? else {
        write_indexed_through(trees, 0)?;
        return Ok(Tip {
            head: 0,
            chain: [0; 32],
        });
    };
    let head =
        key_seq(&last_key).ok_or_else(|| JournalError::corrupt(0, "malformed last record key"))?;

    let mut from = read_indexed_through(trees)?;
    if from > head {
        // Cannot happen with sled's prefix recovery (the record is written
        // before the meta key); say so loudly and re-index what we have.
        tracing::error!(
            indexed_through = from,
            head,
            "index watermark beyond last record"
        );
        from = head;
    }

    // Chain value the first tail record must link to.
    let mut prev_chain = if from == 0 {
        [0; 32]
    } else {
        let v = trees.records.get(seq_key(from))?.ok_or_else(|| {
            JournalError::corrupt(from, "record named by meta/indexed_through is missing")
        })?;
        decode(from, &v)?.chain
    };

    let mut healed = 0u64;
    for (expected, item) in (from + 1..).zip(trees.records.range(seq_key(from + 1)..)) {
        let (k, v) = item?;
        let seq = key_seq(&k).ok_or_else(|| JournalError::corrupt(expected, "malformed key"))?;
        if seq != expected {
            return Err(JournalError::corrupt(
                expected,
                format!("missing record: next stored seq is {seq}"),
            ));
        }
        let stored = decode(seq, &v)?;
        if stored.seq != seq || stored.prev_chain != prev_chain {
            return Err(JournalError::corrupt(
                seq,
                "tail record does not link to its predecessor",
            ));
        }
        trees.insert_index(&index::entries(seq, stored.time_ms, &stored.header))?;
        if stored.header.needs_delivery() {
            trees.init_state(seq, stored.time_ms)?;
        }
        prev_chain = stored.chain;
        healed += 1;
    }
    write_indexed_through(trees, head)?;
    if healed > 0 {
        tracing::info!(records = healed, head, "re-indexed journal tail");
    }
    Ok(Tip {
        head,
        chain: prev_chain,
    })
}
