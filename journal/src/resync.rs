//! The primary's work list: message records its mail server has not received, because
//! they were accepted while the replica was the active site (the replica's applier
//! delivered them there). A failback must not happen before the list is empty, or the
//! users' mail would seem to vanish when they move back.
//!
//! The list is a tree of seqs next to the records, like `undelivered`. The caller marks a
//! seq before it writes the delivery state that left the message to the replica, so a
//! crash leaves at most an extra entry (a message delivered twice), never a missing one.
//!
//! Beside it, the records whose copy the primary's MTA may hold unconfirmed: the
//! connection broke after the message's final dot, before the MTA's reply. Such a copy
//! can still arrive (the MTA had it queued); a second one sent meanwhile would arrive
//! twice. The tree keeps when that happened, so that the one who sends again first gives
//! the MTA's queue its time.

use crate::codec::{key_seq, seq_key};
use crate::error::JournalError;
use crate::record::Seq;
use crate::store::Journal;

impl Journal {
    /// Puts `seq` on the primary's work list. Durable with the next flush or append.
    pub fn resync_mark(&self, seq: Seq) -> Result<(), JournalError> {
        if seq == 0 || seq > self.head() {
            return Err(JournalError::NotFound(seq));
        }
        self.inner.trees.resync.insert(seq_key(seq), &[])?;
        Ok(())
    }

    /// Takes `seq` off the list: the primary has the message (or refused it for good).
    pub fn resync_done(&self, seq: Seq) -> Result<(), JournalError> {
        self.inner.trees.resync.remove(seq_key(seq))?;
        Ok(())
    }

    /// Up to `max` seqs on the list, oldest first.
    pub fn resync_pending(&self, max: usize) -> Result<Vec<Seq>, JournalError> {
        let mut out = Vec::new();
        for item in self.inner.trees.resync.iter().take(max) {
            let (key, _) = item?;
            let seq = key_seq(&key).ok_or_else(|| {
                JournalError::corrupt(0, format!("malformed resync key {}", hex::encode(&key)))
            })?;
            out.push(seq);
        }
        Ok(out)
    }

    /// How many seqs are on the list.
    pub fn resync_len(&self) -> usize {
        self.inner.trees.resync.len()
    }

    /// Notes that the primary's MTA may hold a copy of `seq` it never confirmed, since
    /// `at_ms` (ms since the Unix epoch). Durable with the next flush or append.
    pub fn unconfirmed_mark(&self, seq: Seq, at_ms: u64) -> Result<(), JournalError> {
        if seq == 0 || seq > self.head() {
            return Err(JournalError::NotFound(seq));
        }
        let trees = &self.inner.trees;
        trees
            .unconfirmed
            .insert(seq_key(seq), &at_ms.to_be_bytes())?;
        Ok(())
    }

    /// Since when the primary's MTA may hold an unconfirmed copy of `seq`, if it may.
    pub fn unconfirmed_since(&self, seq: Seq) -> Result<Option<u64>, JournalError> {
        let Some(value) = self.inner.trees.unconfirmed.get(seq_key(seq))? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
            JournalError::corrupt(
                seq,
                format!("malformed unconfirmed entry {}", hex::encode(&value)),
            )
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// `seq`'s copy is settled: found at the primary, or sent again after the wait.
    pub fn unconfirmed_done(&self, seq: Seq) -> Result<(), JournalError> {
        self.inner.trees.unconfirmed.remove(seq_key(seq))?;
        Ok(())
    }

    /// How many records may have an unconfirmed copy at the primary's MTA.
    pub fn unconfirmed_len(&self) -> usize {
        self.inner.trees.unconfirmed.len()
    }
}
