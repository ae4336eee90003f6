//! Appending with group commit.
//!
//! An append runs in two phases. **Insert** (blocking, under the `tail`
//! mutex): take the next seq, link the chain, write record + index entries +
//! state + `indexed_through`. Holding one mutex for this keeps seqs gap-free
//! and sled's log in seq order. **Commit**: the appender waits until the
//! durable seq covers its own. Whoever takes `flush_lock` first becomes
//! leader and performs one sled `flush()` + fsync of the blob files + one
//! `fdatasync` of `dir/db`, covering every record inserted so far; everyone
//! it covered finds the watermark already past their seq and returns without
//! flushing. N concurrent appends thus cost far fewer than N syncs.
//!
//! Why fdatasync: sled's `flush()` only issues `sync_file_range`, which
//! neither flushes the drive's cache nor the metadata needed to read newly
//! allocated blocks. Values that make a sled page larger than
//! `segment_size / 4` (128 KiB by default) are written by sled to separate
//! files under `dir/blobs/` with no sync at all, so the leader also fsyncs
//! every blob file it has not synced before, and the `blobs` directory.
//!
//! **Failures never leave a seq gap.** A failed insert removes whatever it
//! wrote for its seq and does not advance the tail, so the next append reuses
//! the seq. A failed flush rolls back every record inserted after the
//! durable head (none of them was acknowledged), bumps `epoch` so their
//! waiters fail too, and rewinds the tail to the durable head. If the
//! rollback itself fails (sled latches its first io error, e.g. ENOSPC, and
//! refuses all later writes) the journal is poisoned: every later append
//! fails with the same error until it is reopened, and reopening recovers a
//! gap-free prefix. Records inserted but not acknowledged may survive such a
//! crash or reopen; the client was refused, so at worst it sends a duplicate.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::codec::{self, seq_key};
use crate::error::JournalError;
use crate::index;
use crate::metrics as m;
use crate::record::{Appended, NewRecord, RecordKind, Seq};
use crate::recovery::write_indexed_through;
use crate::state::DeliveryState;
use crate::store::{Inner, Journal};

/// The append side's view of the end of the chain.
#[derive(Debug)]
pub(crate) struct Tail {
    /// Last inserted (not necessarily durable) seq.
    last_seq: Seq,
    last_chain: [u8; 32],
    /// Chain of the durable head, to rewind to after a failed flush.
    durable_chain: [u8; 32],
    /// Bumped by every rolled-back group commit.
    epoch: u64,
    /// Why the last group commit failed, for the waiters it rolled back.
    last_failure: Option<JournalError>,
    /// Set when a failure could not be cleaned up; the journal is unusable.
    poisoned: Option<JournalError>,
}

impl Tail {
    pub(crate) fn new(head: Seq, chain: [u8; 32]) -> Tail {
        Tail {
            last_seq: head,
            last_chain: chain,
            durable_chain: chain,
            epoch: 0,
            last_failure: None,
            poisoned: None,
        }
    }
}

impl Journal {
    /// Appends a record and returns once it is durable (fdatasync'ed).
    /// Message records start with `DeliveryState` Pending.
    pub async fn append(&self, rec: NewRecord) -> Result<Appended, JournalError> {
        let started = Instant::now();
        let body_len = rec.kind.body().len() as u64;
        let inner = self.inner.clone();
        // spawn_blocking is not cancelled when the caller drops this future,
        // so an insert is never left half done.
        let (appended, epoch) = tokio::task::spawn_blocking(move || inner.insert(rec))
            .await
            .map_err(|_| JournalError::Closed)??;
        self.wait_durable(appended.seq, epoch).await?;
        metrics::histogram!(m::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::APPENDS_TOTAL).increment(1);
        metrics::counter!(m::BYTES_TOTAL).increment(body_len);
        Ok(appended)
    }

    /// Makes everything written so far durable, delivery-state updates included.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let guard = self.inner.flush_lock.clone().lock_owned().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _leader = guard;
            inner.commit()
        })
        .await
        .map_err(|_| JournalError::Closed)?
    }

    async fn wait_durable(&self, seq: Seq, epoch: u64) -> Result<(), JournalError> {
        loop {
            if self.inner.settled(seq, epoch)? {
                return Ok(());
            }
            let guard = self.inner.flush_lock.clone().lock_owned().await;
            if self.inner.settled(seq, epoch)? {
                return Ok(());
            }
            let inner = self.inner.clone();
            // The guard travels into the blocking task so a cancelled caller
            // cannot let a second leader start while this flush still runs.
            tokio::task::spawn_blocking(move || {
                let _leader = guard;
                inner.commit()
            })
            .await
            .map_err(|_| JournalError::Closed)??;
        }
    }
}

impl Inner {
    fn lock_tail(&self) -> Result<std::sync::MutexGuard<'_, Tail>, JournalError> {
        self.tail.lock().map_err(|_| JournalError::Closed)
    }

    /// Whether the record inserted as `seq` in `epoch` is durable; an error
    /// if a failed group commit rolled it back.
    ///
    /// The epoch must be checked under the tail lock *before* the watermark:
    /// after a rollback the seq is reused, and a later durable head covering
    /// it says nothing about the rolled-back record.
    fn settled(&self, seq: Seq, epoch: u64) -> Result<bool, JournalError> {
        let tail = self.lock_tail()?;
        if tail.epoch != epoch {
            return Err(tail
                .last_failure
                .as_ref()
                .map_or(JournalError::Closed, JournalError::replay));
        }
        Ok(*self.durable.borrow() >= seq)
    }

    /// Insert phase; returns the epoch the record was inserted in.
    fn insert(&self, rec: NewRecord) -> Result<(Appended, u64), JournalError> {
        let prepared = codec::prepare(rec, self.opts.compress_min_bytes);
        let header = &prepared.header;
        let mut tail = self.lock_tail()?;
        if let Some(e) = &tail.poisoned {
            return Err(e.replay());
        }
        let seq = tail.last_seq + 1;
        let (chain, value) = prepared.seal(seq, tail.last_chain)?;
        let entries = index::entries(seq, prepared.time_ms, header);
        let written = (|| {
            self.trees.records.insert(seq_key(seq), value)?;
            self.trees.insert_index(&entries)?;
            if matches!(header, RecordKind::Message(_)) {
                // Unconditional: a seq reused after a rollback starts afresh.
                self.trees
                    .write_state(seq, &DeliveryState::pending(prepared.time_ms))?;
            }
            write_indexed_through(&self.trees, seq)
        })();
        if let Err(e) = written {
            if let Err(undo) = self.remove_record(seq, &entries) {
                tracing::error!(seq, error = %undo, "could not undo failed insert; journal poisoned");
                tail.poisoned = Some(e.replay());
            }
            return Err(e);
        }
        tail.last_seq = seq;
        tail.last_chain = chain;
        Ok((
            Appended {
                seq,
                chain,
                body_sha256: prepared.body_sha256,
            },
            tail.epoch,
        ))
    }

    /// Removes one record and everything derived from it, derived data first
    /// so a crash in between leaves a record that recovery re-indexes.
    fn remove_record(
        &self,
        seq: Seq,
        entries: &[(index::Index, Vec<u8>)],
    ) -> Result<(), JournalError> {
        write_indexed_through(&self.trees, seq - 1)?;
        self.trees.remove_index(entries)?;
        self.trees.remove_state(seq)?;
        self.trees.records.remove(seq_key(seq))?;
        Ok(())
    }

    /// One group commit (the caller holds `flush_lock`).
    pub(crate) fn commit(&self) -> Result<(), JournalError> {
        let (target, chain) = {
            let tail = self.lock_tail()?;
            if let Some(e) = &tail.poisoned {
                return Err(e.replay());
            }
            (tail.last_seq, tail.last_chain)
        };
        let before = *self.durable.borrow();
        let started = Instant::now();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::FLUSHES_TOTAL).increment(1);
        match self.sync_storage() {
            Ok(()) => {
                self.durable.send_if_modified(|d| {
                    let advance = target > *d;
                    if advance {
                        *d = target;
                    }
                    advance
                });
                self.lock_tail()?.durable_chain = chain;
                metrics::gauge!(m::HEAD).set(target as f64);
                tracing::debug!(
                    batch = target.saturating_sub(before),
                    head = target,
                    micros = started.elapsed().as_micros() as u64,
                    "journal group commit"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, head = before, "journal flush failed; rolling back");
                self.roll_back(before, &e)?;
                Err(e)
            }
        }
    }

    /// Undoes every record after `durable` and fails their waiters. A
    /// failure to undo poisons the journal instead of being returned: the
    /// caller reports the flush error that started this.
    fn roll_back(&self, durable: Seq, cause: &JournalError) -> Result<(), JournalError> {
        let mut tail = self.lock_tail()?;
        let mut clean = true;
        for seq in (durable + 1..=tail.last_seq).rev() {
            if let Err(e) = self.undo(seq) {
                tracing::error!(seq, error = %e, "rollback failed; journal poisoned");
                tail.poisoned = Some(cause.replay());
                clean = false;
                break;
            }
        }
        if clean {
            tail.last_seq = durable;
            tail.last_chain = tail.durable_chain;
        }
        tail.epoch += 1;
        tail.last_failure = Some(cause.replay());
        Ok(())
    }

    fn undo(&self, seq: Seq) -> Result<(), JournalError> {
        let entries = match self.trees.records.get(seq_key(seq))? {
            Some(v) => {
                let s = codec::decode(seq, &v)?;
                index::entries(seq, s.time_ms, &s.header)
            }
            None => Vec::new(),
        };
        self.remove_record(seq, &entries)
    }

    /// sled flush, then fsync of new blob files, then fdatasync of the log.
    pub(crate) fn sync_storage(&self) -> Result<(), JournalError> {
        if self
            .inject_sync_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(JournalError::Full);
        }
        self.db.flush()?;
        self.sync_new_blobs()?;
        self.db_file
            .sync_data()
            .map_err(|e| JournalError::io("fdatasync of the sled data file", e))
    }

    /// fsyncs blob files written since the last call, and their directory.
    fn sync_new_blobs(&self) -> Result<(), JournalError> {
        let blobs = self.dir.join("blobs");
        let mut synced = self.synced_blobs.lock().map_err(|_| JournalError::Closed)?;
        let listing = std::fs::read_dir(&blobs)
            .map_err(|e| JournalError::io(format!("listing {}", blobs.display()), e))?;
        let mut present = std::collections::HashSet::new();
        let mut new = 0usize;
        for entry in listing {
            let entry = entry.map_err(|e| JournalError::io("listing sled blobs", e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()).and_then(|f| f.sync_data()) {
                    Ok(()) => new += 1,
                    // sled garbage-collected it meanwhile: nothing to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(JournalError::io(
                            format!("fsync of blob {}", entry.path().display()),
                            e,
                        ));
                    }
                }
            }
            present.insert(name);
        }
        *synced = present;
        if new > 0 {
            self.sync_dir(&blobs)?;
        }
        Ok(())
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<(), JournalError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| JournalError::io(format!("fsync of directory {}", dir.display()), e))
    }
}
