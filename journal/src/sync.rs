//! Making sled's writes durable: one call of [`Inner::sync_storage`] is the
//! flush of one group commit.
//!
//! Why fdatasync: sled's `flush()` only issues `sync_file_range`, which
//! neither flushes the drive's cache nor the metadata needed to read newly
//! allocated blocks. Values that make a sled page larger than
//! `segment_size / 4` (128 KiB by default) are written by sled to separate
//! files under `dir/blobs/` with no sync at all, so every blob file not
//! synced before is fsynced too, and then the `blobs` directory.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::JournalError;
use crate::store::Inner;

impl Inner {
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
