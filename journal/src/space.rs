//! The free-space reserve: a new record is refused with [`JournalError::Full`] while the
//! journal's filesystem has less than `JournalOptions::min_free_bytes` available, before
//! anything is written. sled latches the first write error it meets (ENOSPC included) and
//! refuses every later write until the journal is reopened; refusing at the reserve keeps
//! it from ever meeting one, so appends resume by themselves once space is freed. The
//! reserve also leaves room for what must still be written while new mail is refused:
//! delivery states of the queue draining, holds, the journal's own housekeeping.
//!
//! Postfix does the same with `queue_minfree`.

use std::sync::atomic::Ordering;

use crate::error::JournalError;
use crate::metrics as m;
use crate::store::Inner;

impl Inner {
    /// `Full` while the filesystem holds less than the reserve; logs each change.
    pub(crate) fn check_space(&self) -> Result<(), JournalError> {
        let reserve = self.opts.min_free_bytes;
        if reserve == 0 {
            return Ok(());
        }
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            // Cannot tell: let the write try (and fail on its own if it must).
            Err(_) => return Ok(()),
        };
        let low = free < reserve;
        if self.low_space.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(free, reserve, dir = %self.dir.display(),
                    "journal filesystem below its free-space reserve; new mail is refused (452) until space is freed");
            } else {
                tracing::warn!(
                    free,
                    reserve,
                    "journal filesystem has room again; accepting mail"
                );
            }
            metrics::gauge!(m::LOW_SPACE).set(if low { 1.0 } else { 0.0 });
        }
        if low {
            metrics::counter!(m::REFUSED_LOW_SPACE).increment(1);
            return Err(JournalError::Full);
        }
        Ok(())
    }
}
