//! Reading long stretches of the journal on every core, in seq order.
//!
//! Decoding a record (decompressing, opening a sealed body, hashing it) costs far more
//! than finding it, so walks over many records (verify, export, search without an index)
//! split the work: one thread iterates sled and hands out batches of stored values,
//! workers decode them, and the caller's thread takes the results back in seq order.
//! Every channel is bounded, so memory stays a few batches whatever the journal's size;
//! a caller that stops early closes the channels and the threads wind down.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};

use crate::codec::key_seq;
use crate::error::JournalError;
use crate::record::{Record, Seq};
use crate::store::Journal;

/// Records per batch handed to a worker.
const BATCH: usize = 256;
/// At most this many decoding threads.
const MAX_WORKERS: usize = 4;

type Batch = Vec<(Seq, sled::IVec)>;

/// Maps every stored `(seq, value)` of `items` with `map` on worker threads and feeds the
/// results to `consume` in the order of `items`, until it returns `false` or `items` ends.
pub(crate) fn ordered<T: Send>(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send,
    map: impl Fn(Seq, &[u8]) -> T + Sync,
    mut consume: impl FnMut(T) -> bool,
) -> Result<(), JournalError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS);
    let (job_tx, job_rx) = sync_channel::<(u64, Result<Batch, JournalError>)>(workers * 2);
    let (done_tx, done_rx) = sync_channel::<(u64, Result<Vec<T>, JournalError>)>(workers * 2);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        scope.spawn(move || feed(items, job_tx));
        for _ in 0..workers {
            let (jobs, done, map) = (&job_rx, done_tx.clone(), &map);
            scope.spawn(move || work(jobs, done, map));
        }
        drop(done_tx);
        let mut waiting: BTreeMap<u64, Result<Vec<T>, JournalError>> = BTreeMap::new();
        let mut next = 0u64;
        for (index, batch) in done_rx.iter() {
            waiting.insert(index, batch);
            while let Some(batch) = waiting.remove(&next) {
                next += 1;
                for item in batch? {
                    if !consume(item) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })
}

/// Cuts `items` into numbered batches for the workers.
fn feed(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    jobs: std::sync::mpsc::SyncSender<(u64, Result<Batch, JournalError>)>,
) {
    let mut index = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    for item in items {
        let entry = item.map_err(JournalError::from).and_then(|(k, v)| {
            let seq =
                key_seq(&k).ok_or_else(|| JournalError::corrupt(0, "malformed record key"))?;
            Ok((seq, v))
        });
        match entry {
            Ok(entry) => batch.push(entry),
            Err(err) => {
                // What came before the error is still reported first.
                if !batch.is_empty() {
                    if jobs.send((index, Ok(std::mem::take(&mut batch)))).is_err() {
                        return;
                    }
                    index += 1;
                }
                let _ = jobs.send((index, Err(err)));
                return;
            }
        }
        if batch.len() == BATCH {
            if jobs.send((index, Ok(std::mem::take(&mut batch)))).is_err() {
                return;
            }
            index += 1;
        }
    }
    if !batch.is_empty() {
        let _ = jobs.send((index, Ok(batch)));
    }
}

fn work<T>(
    jobs: &Mutex<Receiver<(u64, Result<Batch, JournalError>)>>,
    done: std::sync::mpsc::SyncSender<(u64, Result<Vec<T>, JournalError>)>,
    map: &(impl Fn(Seq, &[u8]) -> T + Sync),
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((index, batch)) = job else { return };
        let mapped = batch.map(|b| b.iter().map(|(seq, v)| map(*seq, v)).collect());
        if done.send((index, mapped)).is_err() {
            return;
        }
    }
}

impl Journal {
    /// Calls `each` with every durable record from `seq` on, in seq order, until it
    /// returns `false`; records are decoded on all cores meanwhile. A record that cannot
    /// be read ends the walk with its error.
    pub fn scan_from(
        &self,
        seq: Seq,
        mut each: impl FnMut(Record) -> bool,
    ) -> Result<(), JournalError> {
        let head = self.head();
        if seq.max(1) > head {
            return Ok(());
        }
        let range = self
            .inner
            .trees
            .records
            .range(crate::codec::seq_key(seq.max(1))..=crate::codec::seq_key(head));
        let key = self.key();
        let mut failed: Option<JournalError> = None;
        ordered(
            range,
            |seq, value| crate::store::load(seq, value, key),
            |record| match record {
                Ok(record) => each(record),
                Err(err) => {
                    failed = Some(err);
                    false
                }
            },
        )?;
        failed.map_or(Ok(()), Err)
    }
}
