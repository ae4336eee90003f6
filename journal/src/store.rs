//! The `Journal` handle: opening the sled database, and reading records back.
//!
//! Appending lives in `commit.rs` (the writer thread) and `sync.rs`; this
//! file owns the state shared with the writer thread and the read paths,
//! which only ever expose durable records.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::codec::{decode, seq_key};
use crate::commit::Writer;
use crate::error::JournalError;
use crate::record::{Record, Seq};
use crate::recovery;
use crate::seal::{self, BodyKey};

/// Tuning knobs. Build them from [`JournalOptions::default()`] (fields may
/// be added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// Bodies at least this large are zstd-compressed when that saves >= 10%.
    /// Default 512.
    pub compress_min_bytes: usize,
    /// Size of sled's page cache in bytes (sled's `cache_capacity`): the
    /// bulk of the journal's memory, which otherwise grows with the journal
    /// up to sled's own default of 1 GiB. sled's accounting is approximate
    /// and some per-page bookkeeping lives outside it, so the process uses
    /// somewhat more. Appends mostly touch recent pages; reads of older
    /// records, index lookups and inserts into large indexes slow down when
    /// the cache is smaller than their working set. Default 64 MiB.
    pub cache_bytes: u64,
    /// Seals record bodies at rest ([`BodyKey`]); `None` stores them readable. A journal
    /// once sealed refuses to open without its key, or with another one.
    pub body_key: Option<Arc<BodyKey>>,
    /// New records are refused with [`JournalError::Full`] while the journal's filesystem
    /// has less than this many bytes available (see `space.rs`); 0 turns the check off.
    /// Default 0.
    pub min_free_bytes: u64,
    /// How long an open waits for another process to let go of the journal (a levee
    /// that is handing over to its successor). Default 2 s.
    pub lock_wait: std::time::Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            compress_min_bytes: 512,
            cache_bytes: 64 << 20,
            lock_wait: std::time::Duration::from_secs(2),
            body_key: None,
            min_free_bytes: 0,
        }
    }
}

/// The sled trees of one journal.
#[derive(Debug)]
pub(crate) struct Trees {
    pub records: sled::Tree,
    pub meta: sled::Tree,
    /// Callers' named values ([`Journal::set_meta`]), apart from `meta`.
    pub user_meta: sled::Tree,
    pub state: sled::Tree,
    pub undelivered: sled::Tree,
    pub idx_message_id: sled::Tree,
    pub idx_sender: sled::Tree,
    pub idx_recipient: sled::Tree,
    pub idx_day: sled::Tree,
    pub idx_audit: sled::Tree,
    /// Seqs the primary's mail server has yet to receive ([`Journal::resync_mark`]).
    pub resync: sled::Tree,
    /// Seqs whose copy the primary's MTA may hold unconfirmed, with since when
    /// ([`Journal::unconfirmed_mark`]).
    pub unconfirmed: sled::Tree,
    /// Legal holds and pruned ranges, derived from their audit records (`retention.rs`).
    pub idx_held: sled::Tree,
    pub idx_holds: sled::Tree,
    pub idx_released: sled::Tree,
    pub idx_pruned: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Trees, JournalError> {
        Ok(Trees {
            records: db.open_tree("records")?,
            meta: db.open_tree("meta")?,
            user_meta: db.open_tree("user_meta")?,
            state: db.open_tree("state")?,
            undelivered: db.open_tree("undelivered")?,
            idx_message_id: db.open_tree("idx_message_id")?,
            idx_sender: db.open_tree("idx_sender")?,
            idx_recipient: db.open_tree("idx_recipient")?,
            idx_day: db.open_tree("idx_day")?,
            idx_audit: db.open_tree("idx_audit")?,
            resync: db.open_tree("resync_primary")?,
            unconfirmed: db.open_tree("unconfirmed_primary")?,
            idx_held: db.open_tree("idx_held")?,
            idx_holds: db.open_tree("idx_holds")?,
            idx_released: db.open_tree("idx_released")?,
            idx_pruned: db.open_tree("idx_pruned")?,
        })
    }
}

/// Shared state behind every `Journal` clone.
#[derive(Debug)]
pub(crate) struct Inner {
    pub dir: PathBuf,
    pub db: sled::Db,
    pub trees: Trees,
    /// sled's log file `dir/db`, opened separately so we can fdatasync it.
    pub db_file: File,
    pub opts: JournalOptions,
    /// Highest durable seq, published by the writer thread after each group
    /// commit; the receivers are handed out by `watch_head`.
    pub durable: watch::Sender<Seq>,
    /// The durable head and its chain hash, updated by the writer thread just
    /// before it raises `durable`.
    pub tip: Mutex<(Seq, [u8; 32])>,
    pub flushes: AtomicU64,
    /// Blob files already fsynced (see `sync.rs`).
    pub synced_blobs: Mutex<HashSet<OsString>>,
    pub state_lock: Mutex<()>,
    /// One hold, release or prune at a time: a prune must not plan around a hold being
    /// placed.
    pub retention_lock: tokio::sync::Mutex<()>,
    /// Test hook: this many upcoming syncs fail with `Full`.
    pub inject_sync_failures: AtomicU32,
    /// The filesystem was below the free-space reserve at the last look.
    pub low_space: std::sync::atomic::AtomicBool,
}

/// A durable, hash-chained, append-only journal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    pub(crate) inner: Arc<Inner>,
    /// The writer thread, joined when the last clone is dropped.
    pub(crate) writer: Arc<Writer>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, recovers the head and
    /// chain, heals indexes/state of records written just before a crash, and
    /// makes everything found durable before reporting it. Blocking.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            JournalError::io(format!("creating journal directory {}", dir.display()), e)
        })?;
        let db = open_db(dir, opts.cache_bytes, opts.lock_wait)?;
        let trees = Trees::open(&db)?;
        seal::check_key(&trees.meta, opts.body_key.as_deref())?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path)
            .map_err(|e| JournalError::io(format!("opening {}", db_path.display()), e))?;

        let tip = recovery::recover(&trees)?;
        trees.backfill_audit()?;

        let inner = Inner {
            dir: dir.to_path_buf(),
            db,
            trees,
            db_file,
            opts,
            durable: watch::Sender::new(0),
            tip: Mutex::new((tip.head, tip.chain)),
            flushes: AtomicU64::new(0),
            synced_blobs: Mutex::new(HashSet::new()),
            state_lock: Mutex::new(()),
            retention_lock: tokio::sync::Mutex::new(()),
            inject_sync_failures: AtomicU32::new(0),
            low_space: std::sync::atomic::AtomicBool::new(false),
        };
        // A freshly created database's directory entries, and whatever the
        // killed previous process left only in the page cache, become durable
        // here; only then is the recovered head reported.
        inner.sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The journal directory itself may have just been created.
            inner.sync_dir(parent)?;
        }
        inner.sync_storage()?;
        inner.durable.send_replace(tip.head);
        metrics::gauge!(crate::metrics::HEAD).set(tip.head as f64);
        let inner = Arc::new(inner);
        let writer = Writer::start(inner.clone(), tip.head, tip.chain)?;
        tracing::info!(dir = %dir.display(), head = tip.head, "journal opened");
        let journal = Journal {
            inner,
            writer: Arc::new(writer),
        };
        // Records a prune recorded but had no time to remove before a crash.
        journal.sweep_pruned()?;
        Ok(journal)
    }

    /// Highest durable seq (0 when empty).
    pub fn head(&self) -> Seq {
        *self.inner.durable.borrow()
    }

    /// Chain hash of the durable head record (`[0; 32]` when empty): what the
    /// next replicated record's `prev_chain` must be. Use [`Journal::tip`]
    /// when head and chain must come from the same moment.
    pub fn last_chain(&self) -> [u8; 32] {
        self.tip().1
    }

    /// The durable head and its chain hash, read together: calling
    /// [`Journal::head`] and then [`Journal::last_chain`] can straddle a
    /// group commit.
    pub fn tip(&self) -> (Seq, [u8; 32]) {
        *self
            .inner
            .tip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A named value kept beside the records (e.g. the replication epoch),
    /// from a tree of its own: names cannot collide with the journal's
    /// internal bookkeeping.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self
            .inner
            .trees
            .user_meta
            .get(key.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Sets a named value (meant for short ASCII names). Applied at once and
    /// durable with the next group commit or [`Journal::flush`]; await
    /// `flush` when it must survive a crash (e.g. before acting on a new
    /// epoch).
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        self.inner.trees.user_meta.insert(key.as_bytes(), value)?;
        Ok(())
    }

    /// Follows the durable head; the replica streamer waits on this.
    pub fn watch_head(&self) -> watch::Receiver<Seq> {
        self.inner.durable.subscribe()
    }

    /// The durable record `seq`, body decompressed and checked against its hash.
    pub fn get(&self, seq: Seq) -> Result<Option<Record>, JournalError> {
        if seq == 0 || seq > self.head() {
            return Ok(None);
        }
        match self.inner.trees.records.get(seq_key(seq))? {
            None => Ok(None),
            Some(value) => load(seq, &value, self.key()).map(Some),
        }
    }

    /// Up to `max` durable records with seq >= `seq`, ascending.
    pub fn read_from(&self, seq: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let head = self.head();
        let start = seq.max(1);
        let mut out = Vec::new();
        if start > head || max == 0 {
            return Ok(out);
        }
        for item in self
            .inner
            .trees
            .records
            .range(seq_key(start)..=seq_key(head))
        {
            let (k, v) = item?;
            let key_seq = crate::codec::key_seq(&k)
                .ok_or_else(|| JournalError::corrupt(0, "malformed record key"))?;
            out.push(load(key_seq, &v, self.key())?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Number of flush+fdatasync rounds performed since open (diagnostics and
    /// the group-commit tests).
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// The key that seals bodies, if this journal has one.
    pub(crate) fn key(&self) -> Option<&BodyKey> {
        self.inner.opts.body_key.as_deref()
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes the next `n` group-commit syncs fail as if the disk were full,
    /// to exercise the rollback path.
    #[doc(hidden)]
    pub fn fail_next_syncs_for_tests(&self, n: u32) {
        self.inner.inject_sync_failures.store(n, Ordering::SeqCst);
    }

    /// Raw access to a sled tree, for tamper tests only. Writing through it
    /// bypasses every invariant of the journal.
    #[doc(hidden)]
    pub fn raw_tree_for_tests(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.inner.db.open_tree(name)?)
    }
}

/// Opens sled's database. sled lets go of its file lock only once its background
/// writers are done, so a journal closed a moment ago (by this process, or by a levee
/// handing over) can still be locked for a while: that case is retried for up to
/// `lock_wait` (a process that keeps the lock is reported after the wait).
fn open_db(
    dir: &Path,
    cache_bytes: u64,
    lock_wait: std::time::Duration,
) -> Result<sled::Db, JournalError> {
    let config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
    let deadline = std::time::Instant::now() + lock_wait;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Decodes and fully checks one stored value found under key `seq`.
pub(crate) fn load(seq: Seq, value: &[u8], key: Option<&BodyKey>) -> Result<Record, JournalError> {
    let stored = decode(seq, value)?;
    if stored.seq != seq {
        return Err(JournalError::corrupt(
            seq,
            format!("value stored under seq {seq} claims seq {}", stored.seq),
        ));
    }
    stored.into_record(key)
}
