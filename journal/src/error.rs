//! Error type of the journal.
//!
//! The proxy maps these onto SMTP replies without knowing how the journal
//! stores data, so the one distinction it needs — "the disk is full, try
//! later" — is lifted out of the io/sled errors into its own variant.

use std::io;

use crate::Seq;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file-system operation of the journal itself failed.
    #[error("journal I/O failed while {context}: {source}")]
    Io {
        /// What the journal was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The embedded sled database reported an error.
    #[error("journal database (sled) failed: {0}")]
    Sled(#[source] sled::Error),
    /// A stored record could not be decoded or failed an integrity check.
    #[error("journal record {seq} is corrupt: {reason}")]
    Corrupt {
        /// The record's sequence number (or the key it was found under).
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },
    /// The disk (or quota) is full; nothing was appended.
    #[error("journal storage is full (no space left on device)")]
    Full,
    /// A record could not be serialized.
    #[error("journal could not encode a record: {0}")]
    Encode(#[source] postcard::Error),
    /// A record offered for appending does not fit this journal (wrong seq,
    /// does not link to the chain, body or chain hash wrong). Nothing of the
    /// offered batch was written; local storage is fine (unlike `Corrupt`).
    #[error("record {seq} offered for appending does not fit the journal: {reason}")]
    Mismatch {
        /// The seq the first bad record carries.
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },
    /// The sequence number does not name a durable record.
    #[error("journal has no record with seq {0}")]
    NotFound(Seq),
    /// The journal can no longer accept work (runtime shut down, or an
    /// earlier storage failure left it unusable until it is reopened).
    #[error("journal is closed")]
    Closed,
    /// The body encryption key is missing, unreadable or not this journal's.
    #[error("journal encryption key: {0}")]
    Key(String),
    /// A retention or legal-hold request that cannot be carried out as asked.
    #[error("journal retention: {0}")]
    Retention(String),
}

impl JournalError {
    /// Wraps an io error, turning "no space"/"quota exceeded" into [`JournalError::Full`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> JournalError {
        if is_full(&source) {
            tracing::warn!(context = %context.into(), error = %source, "journal storage full");
            JournalError::Full
        } else {
            JournalError::Io {
                context: context.into(),
                source,
            }
        }
    }

    pub(crate) fn corrupt(seq: Seq, reason: impl Into<String>) -> JournalError {
        JournalError::Corrupt {
            seq,
            reason: reason.into(),
        }
    }

    /// A copy of this error for the other appenders of a failed group
    /// commit; `io::Error` is not `Clone`, so its kind and text are kept.
    pub(crate) fn replay(&self) -> JournalError {
        match self {
            JournalError::Io { context, source } => JournalError::Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            JournalError::Sled(e) => JournalError::Sled(e.clone()),
            JournalError::Corrupt { seq, reason } => JournalError::corrupt(*seq, reason.clone()),
            JournalError::Mismatch { seq, reason } => JournalError::Mismatch {
                seq: *seq,
                reason: reason.clone(),
            },
            JournalError::Full => JournalError::Full,
            JournalError::Encode(e) => JournalError::Encode(e.clone()),
            JournalError::NotFound(seq) => JournalError::NotFound(*seq),
            JournalError::Closed => JournalError::Closed,
            JournalError::Key(text) => JournalError::Key(text.clone()),
            JournalError::Retention(text) => JournalError::Retention(text.clone()),
        }
    }
}

impl From<sled::Error> for JournalError {
    fn from(e: sled::Error) -> Self {
        match e {
            // sled latches the first io error and hands out clones made with
            // `io::Error::new(kind, ..)`, so only the kind survives: test that.
            sled::Error::Io(source) if is_full(&source) => {
                tracing::warn!(error = %source, "journal database storage full");
                JournalError::Full
            }
            other => JournalError::Sled(other),
        }
    }
}

/// ENOSPC and EDQUOT both mean "free some space and retry later".
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_full_directly_and_through_sled() {
        // 28 is ENOSPC on Linux.
        let raw = io::Error::from_raw_os_error(28);
        assert!(matches!(JournalError::io("x", raw), JournalError::Full));

        let latched = sled::Error::Io(io::Error::from_raw_os_error(28)).clone();
        assert!(matches!(JournalError::from(latched), JournalError::Full));

        let other = io::Error::new(io::ErrorKind::PermissionDenied, "nope");
        assert!(matches!(
            JournalError::io("x", other),
            JournalError::Io { .. }
        ));
    }

    #[test]
    fn replay_keeps_the_variant() {
        assert!(matches!(JournalError::Full.replay(), JournalError::Full));
        let e = JournalError::io("syncing", io::Error::other("boom"));
        let JournalError::Io { context, source } = e.replay() else {
            panic!("variant changed");
        };
        assert_eq!(context, "syncing");
        assert!(source.to_string().contains("boom"));
    }
}
