//! Appending: one writer thread, group commit.
//!
//! [`Journal::append`] hashes and (maybe) compresses the body on the calling
//! task — on the blocking pool for bodies over [`INLINE_PREPARE_MAX`] — then
//! hands the prepared record to the journal's single writer thread over a
//! channel together with a oneshot reply, and awaits the reply.
//!
//! The writer thread (`levee-journal`) owns the end of the chain. It blocks
//! for the first queued job, takes everything else already queued (up to
//! [`MAX_BATCH`]) and commits that batch as one group:
//!
//! 1. **Seal**: in queue order, give each record the next seq and link it
//!    into the chain. Only this thread allocates seqs, so they are gap-free
//!    and sled's log receives records in seq order. A replicated batch
//!    ([`Journal::append_replicated`], `commit/replicate.rs`) is one job
//!    whose records must already carry exactly those seqs and links; it joins
//!    the group whole or is refused whole before anything is written.
//! 2. **Write** (`commit/apply.rs`): every record of the batch, then their
//!    index entries and Pending delivery states, then `meta/indexed_through`
//!    = last seq of the batch (once per batch; recovery re-indexes anything
//!    past it).
//! 3. **Sync**: one sled `flush()` + fsync of new blob files + `fdatasync`
//!    of `dir/db` (see `sync.rs`), whether the batch holds one record or a
//!    thousand. [`Journal::flush`] is a job too, so it syncs everything
//!    written before it, delivery-state updates included.
//! 4. **Publish**: record the durable head's chain (`last_chain`), raise the
//!    durable head (what `head`, `watch_head`, reads and index lookups go
//!    by), then answer every waiter of the batch.
//!
//! While one batch syncs, new appends queue up and form the next batch: the
//! slower the disk, the bigger the groups. No thread ever waits for another
//! in between; an append costs one channel send, one wake-up of the writer
//! (when idle) and one wake-up of the appending task.
//!
//! An appender that is cancelled after submitting does not cancel its
//! record: it is committed with its batch, just not acknowledged.
//!
//! **Failures never leave a seq gap.** A record that cannot be encoded is
//! refused on its own without taking a seq. If writing or syncing a batch
//! fails, the whole batch — exactly the records after the durable head, none
//! of them acknowledged — is rolled back (`indexed_through` first, then the
//! records' derived entries and the records, newest first), the chain end is
//! rewound to the durable head, every waiter of the batch gets the error
//! (`Full` for ENOSPC/EDQUOT) and the next append reuses the seqs. If the
//! rollback itself fails (sled latches its first io error, e.g. ENOSPC, and
//! refuses all later writes) the journal is poisoned: every later append and
//! flush fails with the same error until it is reopened, and reopening
//! recovers a gap-free prefix. Records written but not acknowledged may
//! survive such a crash or reopen; the client was refused, so at worst it
//! sends a duplicate.

use std::sync::mpsc;
use std::sync::{Arc, PoisonError, atomic::Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::codec::{self, Prepared};
use crate::error::JournalError;
use crate::metrics as m;
use crate::record::{Appended, NewRecord, Seq};
use crate::recovery::write_indexed_through;
use crate::store::{Inner, Journal};

mod apply;
mod replicate;

use apply::Sealed;

/// Bodies up to this size are prepared (SHA-256, zstd) on the calling task:
/// that takes tens of microseconds, less than a hop to the blocking pool.
pub(crate) const INLINE_PREPARE_MAX: usize = 16 * 1024;

/// Most jobs one group commit takes; bounds the latency a batch adds for the
/// waiters queued behind it. A replicated batch is one job however many
/// records it carries (its caller chose its size).
pub(crate) const MAX_BATCH: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

/// Work for the writer thread.
#[expect(
    clippy::large_enum_variant,
    reason = "appends are the common case; boxing would cost each one an allocation"
)]
enum Job {
    Append {
        rec: Prepared,
        reply: Reply<Appended>,
    },
    /// Another journal's records, to be linked in verbatim (`replicate.rs`).
    Replicate {
        offered: Vec<replicate::Offered>,
        reply: Reply<Seq>,
    },
    Flush {
        reply: Reply<()>,
    },
}

impl Job {
    fn fail(self, e: JournalError) {
        // A waiter that went away (cancelled append) needs no answer.
        match self {
            Job::Append { reply, .. } => drop(reply.send(Err(e))),
            Job::Replicate { reply, .. } => drop(reply.send(Err(e))),
            Job::Flush { reply } => drop(reply.send(Err(e))),
        }
    }
}

/// Who waits for the current batch, and what they are told on success.
enum Waiter {
    Append(Appended, Reply<Appended>),
    /// Last seq of a replicated batch.
    Replicate(Seq, Reply<Seq>),
    Flush(Reply<()>),
}

impl Waiter {
    fn answer(self, outcome: Result<(), &JournalError>) {
        let outcome = outcome.map_err(JournalError::replay);
        match self {
            Waiter::Append(a, reply) => drop(reply.send(outcome.map(|()| a))),
            Waiter::Replicate(seq, reply) => drop(reply.send(outcome.map(|()| seq))),
            Waiter::Flush(reply) => drop(reply.send(outcome)),
        }
    }
}

/// Handle on the writer thread; the thread is joined when the last
/// `Journal` clone (which shares this handle) is dropped.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread; `head`/`chain` are the recovered, durable tip.
    pub(crate) fn start(
        inner: Arc<Inner>,
        head: Seq,
        chain: [u8; 32],
    ) -> Result<Writer, JournalError> {
        let (tx, rx) = mpsc::channel();
        let state = WriterState {
            inner,
            last_seq: head,
            last_chain: chain,
            poisoned: None,
        };
        let thread = std::thread::Builder::new()
            .name("levee-journal".into())
            .spawn(move || state.run(rx))
            .map_err(|e| JournalError::io("starting the journal writer thread", e))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, job: Job) -> Result<(), JournalError> {
        let tx = self.tx.as_ref().ok_or(JournalError::Closed)?;
        tx.send(job).map_err(|_| JournalError::Closed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued and exit,
        // releasing its handle on sled: once the last `Journal` is dropped the
        // directory can be reopened at once.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("journal writer thread panicked");
        }
    }
}

impl Journal {
    /// Appends a record and returns once it is durable (fdatasync'ed).
    /// Message records start with `DeliveryState` Pending.
    pub async fn append(&self, rec: NewRecord) -> Result<Appended, JournalError> {
        self.inner.check_space()?;
        let started = Instant::now();
        let body_len = rec.kind.body().len();
        let min = self.inner.opts.compress_min_bytes;
        let rec = if body_len <= INLINE_PREPARE_MAX {
            codec::prepare(rec, min, self.key())
        } else {
            let key = self.inner.opts.body_key.clone();
            tokio::task::spawn_blocking(move || codec::prepare(rec, min, key.as_deref()))
                .await
                .map_err(|_| JournalError::Closed)?
        };
        let (reply, answer) = oneshot::channel();
        self.writer.submit(Job::Append { rec, reply })?;
        let appended = answer.await.map_err(|_| JournalError::Closed)??;
        metrics::histogram!(m::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::APPENDS_TOTAL).increment(1);
        metrics::counter!(m::BYTES_TOTAL).increment(body_len as u64);
        Ok(appended)
    }

    /// Makes everything written so far durable, delivery-state updates included.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.writer.submit(Job::Flush { reply })?;
        answer.await.map_err(|_| JournalError::Closed)?
    }
}

/// One group commit in the making.
struct Batch {
    /// The durable tip the batch links on to, and rolls back to.
    durable: Seq,
    durable_chain: [u8; 32],
    records: Vec<Sealed>,
    /// In staging order; every record of `records` belongs to one of them.
    waiters: Vec<Waiter>,
}

/// What only the writer thread touches: the end of the chain.
struct WriterState {
    inner: Arc<Inner>,
    /// Last sealed seq; equal to the durable head between batches.
    last_seq: Seq,
    last_chain: [u8; 32],
    /// Set when a failure could not be cleaned up; the journal is unusable.
    poisoned: Option<JournalError>,
}

impl WriterState {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        while let Ok(first) = rx.recv() {
            jobs.push(first);
            self.group_commit(&mut jobs, &rx);
        }
    }

    /// Commits `jobs` plus whatever else is queued, as one group.
    fn group_commit(&mut self, jobs: &mut Vec<Job>, rx: &mpsc::Receiver<Job>) {
        if let Some(e) = &self.poisoned {
            jobs.drain(..).for_each(|job| job.fail(e.replay()));
            return;
        }
        let mut batch = Batch {
            durable: self.last_seq,
            durable_chain: self.last_chain,
            records: Vec::new(),
            waiters: Vec::new(),
        };
        let started = Instant::now();
        let mut written = 0;
        let outcome = loop {
            while batch.records.len() + jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            for job in jobs.drain(..) {
                self.stage(job, &mut batch);
            }
            if let Err(e) = self.write(&batch.records[written..]) {
                break Err(e);
            }
            written = batch.records.len();
            // Appends that arrived while this round was written join the
            // group: writing them costs far less than the sync they would
            // otherwise wait for and then need on their own.
            if written >= MAX_BATCH {
                break Ok(());
            }
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break Ok(()),
            }
        };
        if batch.waiters.is_empty() {
            return;
        }
        let outcome = outcome
            .and_then(|()| match batch.records.last() {
                Some(last) => write_indexed_through(&self.inner.trees, last.seq),
                None => Ok(()),
            })
            .and_then(|()| {
                self.inner.flushes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::FLUSHES_TOTAL).increment(1);
                self.inner.sync_storage()
            });
        match outcome {
            Ok(()) => {
                let head = self.last_seq;
                if head > batch.durable {
                    *self
                        .inner
                        .tip
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = (head, self.last_chain);
                }
                self.inner.durable.send_if_modified(|d| {
                    let advance = head > *d;
                    if advance {
                        *d = head;
                    }
                    advance
                });
                metrics::gauge!(m::HEAD).set(head as f64);
                tracing::debug!(
                    batch = batch.records.len(),
                    head,
                    micros = started.elapsed().as_micros() as u64,
                    "journal group commit"
                );
                batch.waiters.into_iter().for_each(|w| w.answer(Ok(())));
            }
            Err(e) => {
                tracing::error!(error = %e, head = batch.durable, batch = batch.records.len(),
                    "journal group commit failed; rolling back");
                self.roll_back(&batch, &e);
                batch.waiters.into_iter().for_each(|w| w.answer(Err(&e)));
            }
        }
    }

    /// Seals an append or a replicated batch into the batch, or queues a
    /// flush waiter. A job refused here is refused alone, without taking a seq.
    fn stage(&mut self, job: Job, batch: &mut Batch) {
        match job {
            Job::Flush { reply } => batch.waiters.push(Waiter::Flush(reply)),
            Job::Append { rec, reply } => match self.seal(&rec) {
                Ok((sealed, appended)) => {
                    batch.records.push(sealed);
                    batch.waiters.push(Waiter::Append(appended, reply));
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Job::Replicate { offered, reply } => match self.link_replicated(offered) {
                Ok(records) => {
                    batch.records.extend(records);
                    batch.waiters.push(Waiter::Replicate(self.last_seq, reply));
                }
                Err(e) => drop(reply.send(Err(e))),
            },
        }
    }

    /// Links one append in at the next seq.
    fn seal(&mut self, rec: &Prepared) -> Result<(Sealed, Appended), JournalError> {
        let seq = self.last_seq + 1;
        let (sealed, chain) = Sealed::new(rec, seq, self.last_chain)?;
        (self.last_seq, self.last_chain) = (seq, chain);
        let body_sha256 = rec.body_sha256;
        Ok((
            sealed,
            Appended {
                seq,
                chain,
                body_sha256,
            },
        ))
    }
}
