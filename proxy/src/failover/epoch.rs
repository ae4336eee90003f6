//! The failover epoch and active backend kept in the journal: read at start (a restart
//! neither goes back to an older epoch nor sends sessions to a primary it had left),
//! recorded with an audit record before a transition is published (so the replica stream
//! presents the new epoch from then on, and the replica fences any node still on an older
//! one).

use levee_journal::{Journal, NewRecord};
use levee_replica::receiver::{EPOCH_KEY, stored_epoch};

use super::controller::{Backend, Transition};
use crate::smtp::now_ms;

/// Where the active backend is recorded.
const ACTIVE_KEY: &str = "failover_active";

/// The backend and epoch to start at: the recorded ones, or the primary at epoch 1.
pub fn at_start(journal: &Journal) -> (Backend, u64) {
    let active = match journal.get_meta(ACTIVE_KEY).ok().flatten().as_deref() {
        Some(b"replica") => Backend::Replica,
        _ => Backend::Primary,
    };
    (active, stored_epoch(journal).max(1))
}

/// Makes the transition's epoch durable, with an audit record saying what happened and why.
pub async fn record(journal: &Journal, transition: &Transition) {
    let active: &[u8] = match transition.to {
        Backend::Primary => b"primary",
        Backend::Replica => b"replica",
    };
    let stored = journal
        .set_meta(EPOCH_KEY, &transition.epoch.to_be_bytes())
        .and_then(|()| journal.set_meta(ACTIVE_KEY, active));
    if let Err(err) = stored {
        tracing::error!(%err, epoch = transition.epoch, "cannot record the new epoch");
    }
    let audit = NewRecord::audit(
        now_ms(),
        "levee".into(),
        "failover",
        format!(
            "{:?} -> {:?}, epoch {}: {:?}",
            transition.from, transition.to, transition.epoch, transition.reason
        ),
    );
    // The append's group commit makes the epoch durable too (one sled flush for both).
    if let Err(err) = journal.append(audit).await {
        tracing::error!(%err, epoch = transition.epoch, "cannot journal the transition");
    }
}
