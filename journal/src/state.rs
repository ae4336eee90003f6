//! Mutable delivery state next to the immutable records.
//!
//! The record chain never changes once written; whether a message has been
//! delivered does. That lives in `state` (seq -> postcard `DeliveryState`)
//! plus `undelivered` (seq -> empty), a work list the delivery loop can scan
//! without visiting every delivered message.
//!
//! The two trees are written in an order that only ever leaves a *stale*
//! `undelivered` entry behind after a crash (never a missing one), and
//! readers re-check the state, so no transaction is needed.

use serde::{Deserialize, Serialize};

use crate::codec::{key_seq, seq_key};
use crate::error::JournalError;
use crate::record::Seq;
use crate::store::{Journal, Trees};

/// Where a message stands in delivery to the primary mail system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Not tried yet.
    Pending,
    /// Tried, temporarily failed; retry at `next_attempt_ms`.
    Deferred,
    /// Accepted by the next hop.
    Delivered,
    /// Permanently refused by the next hop.
    Rejected,
    /// Given up on (e.g. retries exhausted).
    Failed,
}

impl DeliveryStatus {
    /// Still needs a delivery attempt.
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Deferred)
    }
}

/// Delivery bookkeeping of one message record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Current status.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, ms since the Unix epoch.
    pub next_attempt_ms: u64,
    /// Last reply from the next hop, as text.
    pub last_reply: Option<String>,
    /// When this state was written, ms since the Unix epoch.
    pub updated_ms: u64,
}

impl DeliveryState {
    /// State of a freshly accepted message.
    pub fn pending(now_ms: u64) -> DeliveryState {
        DeliveryState {
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_reply: None,
            updated_ms: now_ms,
        }
    }
}

fn encode(state: &DeliveryState) -> Result<Vec<u8>, JournalError> {
    postcard::to_allocvec(state).map_err(JournalError::Encode)
}

fn decode(seq: Seq, bytes: &[u8]) -> Result<DeliveryState, JournalError> {
    postcard::from_bytes(bytes)
        .map_err(|e| JournalError::corrupt(seq, format!("undecodable delivery state: {e}")))
}

impl Trees {
    pub(crate) fn write_state(&self, seq: Seq, state: &DeliveryState) -> Result<(), JournalError> {
        let key = seq_key(seq);
        let value = encode(state)?;
        if state.status.is_open() {
            self.undelivered.insert(key, &[])?;
            self.state.insert(key, value)?;
        } else {
            self.state.insert(key, value)?;
            self.undelivered.remove(key)?;
        }
        Ok(())
    }

    pub(crate) fn read_state(&self, seq: Seq) -> Result<Option<DeliveryState>, JournalError> {
        self.state
            .get(seq_key(seq))?
            .map(|v| decode(seq, &v))
            .transpose()
    }

    /// Gives a message record its initial state unless it already has one
    /// (recovery re-runs this for records whose state write may be missing).
    pub(crate) fn init_state(&self, seq: Seq, time_ms: u64) -> Result<(), JournalError> {
        if self.state.contains_key(seq_key(seq))? {
            return Ok(());
        }
        self.write_state(seq, &DeliveryState::pending(time_ms))
    }

    pub(crate) fn remove_state(&self, seq: Seq) -> Result<(), JournalError> {
        let key = seq_key(seq);
        self.undelivered.remove(key)?;
        self.state.remove(key)?;
        Ok(())
    }
}

impl Journal {
    /// Records a new delivery state for a durable message record. The update
    /// is applied at once but only guaranteed on disk after [`Journal::flush`]
    /// (or the next append's group commit).
    pub fn set_state(&self, seq: Seq, state: &DeliveryState) -> Result<(), JournalError> {
        let trees = &self.inner.trees;
        if seq == 0 || seq > self.head() || !trees.state.contains_key(seq_key(seq))? {
            // Only message records have a state; audits and unknown seqs don't.
            return Err(JournalError::NotFound(seq));
        }
        // Serialize writers so the state/undelivered pair of one seq is never
        // interleaved between two updates.
        let _guard = self
            .inner
            .state_lock
            .lock()
            .map_err(|_| JournalError::Closed)?;
        trees.write_state(seq, state)
    }

    /// The delivery state of a durable message record (`None` for audit
    /// records and unknown seqs).
    pub fn state(&self, seq: Seq) -> Result<Option<DeliveryState>, JournalError> {
        if seq > self.head() {
            return Ok(None);
        }
        self.inner.trees.read_state(seq)
    }

    /// Up to `max` durable records whose status is Pending or Deferred, in
    /// ascending seq order, regardless of `next_attempt_ms`.
    pub fn undelivered(&self, max: usize) -> Result<Vec<(Seq, DeliveryState)>, JournalError> {
        let head = self.head();
        let trees = &self.inner.trees;
        let mut out = Vec::new();
        for item in trees.undelivered.iter() {
            if out.len() >= max {
                break;
            }
            let (k, _) = item?;
            let seq = key_seq(&k).ok_or_else(|| {
                JournalError::corrupt(0, format!("malformed undelivered key {}", hex::encode(&k)))
            })?;
            if seq > head {
                break;
            }
            match trees.read_state(seq)? {
                Some(state) if state.status.is_open() => out.push((seq, state)),
                // Stale entry left by a crash between the two writes.
                _ => continue,
            }
        }
        Ok(out)
    }
}
