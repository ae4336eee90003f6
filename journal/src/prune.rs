//! Retention: removing records older than the retention period, except what is held.
//!
//! [`Journal::prune`] plans, then records, then removes. Planning walks the oldest
//! records and gathers runs of consecutive ones that may go: messages and mailbox
//! changes accepted before the cut-off, delivered, not on the primary's resync list, not
//! held, and no later than the caller's bound (what the replica already has). Audit
//! records are never pruned: they are the journal's own history. Every record of a run
//! is verified before it is trusted (body hash and chain link), so pruning can never
//! launder an altered record into a checkpoint. The plan is then appended as one
//! `journal-prune` audit record listing each run's checkpoint (`retention.rs`); the
//! indexer derives the pruned ranges from it, and only then [`Journal::sweep_pruned`]
//! deletes the records with their index entries and delivery states. A crash between
//! the two leaves records that the next open (or the next prune) sweeps.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, key_seq, seq_key};
use crate::error::JournalError;
use crate::index;
use crate::record::{RecordKind, Seq};
use crate::retention::{Checkpoint, PRUNE, PruneDetail, PrunedRange, audit};
use crate::store::Journal;

/// What one [`Journal::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Records removed.
    pub pruned: u64,
    /// Their raw body bytes.
    pub bytes: u64,
    /// Records that were due but held.
    pub held: u64,
    /// The `journal-prune` record, when anything was pruned.
    pub record: Option<Seq>,
    /// Where the next pass goes on, when this one stopped at [`PRUNE_BATCH`] records.
    pub next: Option<Seq>,
}

/// Upper bound of records looked at by one prune; the caller repeats while it prunes.
pub const PRUNE_BATCH: usize = 50_000;

#[derive(Debug, Default)]
struct Plan {
    checkpoints: Vec<Checkpoint>,
    count: u64,
    bytes: u64,
    held: u64,
    next: Option<Seq>,
}

/// Ends the run being gathered, if any.
fn close(run: &mut Option<(Checkpoint, [u8; 32])>, plan: &mut Plan) {
    if let Some((mut cp, chain)) = run.take() {
        cp.chain = hex::encode(chain);
        plan.checkpoints.push(cp);
    }
}

impl Journal {
    /// Prunes records accepted before `before_ms` with seq from `from` to `through` (see
    /// the module doc), looking at no more than [`PRUNE_BATCH`] records (the report says
    /// where to go on); `actor` goes into the audit record. Runs its blocking parts on
    /// tokio's blocking pool.
    pub async fn prune(
        &self,
        time_ms: u64,
        actor: String,
        before_ms: u64,
        (from, through): (Seq, Seq),
    ) -> Result<PruneReport, JournalError> {
        let _one = self.inner.retention_lock.lock().await;
        let journal = self.clone();
        let plan =
            tokio::task::spawn_blocking(move || journal.plan_prune(before_ms, from, through))
                .await
                .map_err(|_| JournalError::Closed)??;
        let mut report = PruneReport {
            held: plan.held,
            next: plan.next,
            ..PruneReport::default()
        };
        if plan.count > 0 {
            let detail = PruneDetail {
                before_ms,
                count: plan.count,
                bytes: plan.bytes,
                checkpoints: plan.checkpoints,
            };
            let appended = self.append(audit(time_ms, actor, PRUNE, &detail)?).await?;
            report = PruneReport {
                pruned: plan.count,
                bytes: plan.bytes,
                held: plan.held,
                record: Some(appended.seq),
                next: plan.next,
            };
            tracing::info!(
                records = plan.count,
                bytes = plan.bytes,
                held = plan.held,
                seq = appended.seq,
                "journal pruned"
            );
        }
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.sweep_pruned())
            .await
            .map_err(|_| JournalError::Closed)??;
        Ok(report)
    }

    fn plan_prune(&self, before_ms: u64, from: Seq, through: Seq) -> Result<Plan, JournalError> {
        let trees = &self.inner.trees;
        let through = through.min(self.head());
        let mut plan = Plan::default();
        // The run being gathered: its checkpoint so far and the chain it ends on.
        let mut run: Option<(Checkpoint, [u8; 32])> = None;
        if from > through {
            return Ok(plan);
        }
        for (looked, item) in trees
            .records
            .range(seq_key(from)..=seq_key(through))
            .enumerate()
        {
            let (k, v) = item?;
            let seq = key_seq(&k).ok_or_else(|| JournalError::corrupt(0, "malformed key"))?;
            if looked >= PRUNE_BATCH {
                plan.next = Some(seq);
                break;
            }
            let stored = decode(seq, &v)?;
            if stored.time_ms >= before_ms {
                break;
            }
            let kind_due = !matches!(stored.header, RecordKind::Audit(_));
            let due = kind_due
                && !trees.undelivered.contains_key(k.as_ref())?
                && !trees.resync.contains_key(k.as_ref())?;
            let held = due && self.is_held(seq)?;
            plan.held += u64::from(held);
            let contiguous = run.as_ref().is_some_and(|(cp, _)| cp.last + 1 == seq);
            if !due || held || !contiguous {
                close(&mut run, &mut plan);
            }
            if !due || held {
                continue;
            }
            // Never prune what does not verify: the checkpoint would vouch for it.
            let prev = run.as_ref().map_or(stored.prev_chain, |(_, chain)| *chain);
            let broken = |why: &str| {
                JournalError::Retention(format!(
                    "record {seq} {why}: pruning stopped; run `levee journal verify`"
                ))
            };
            if stored.prev_chain != prev {
                return Err(broken("does not link to the record before it"));
            }
            if stored.expected_chain(&prev) != stored.chain {
                return Err(broken("fails its chain hash"));
            }
            stored
                .raw_body(self.key())
                .map_err(|e| broken(&format!("has a bad body ({e})")))?;
            plan.count += 1;
            plan.bytes += stored.body_len;
            match &mut run {
                Some((cp, chain)) => {
                    cp.last = seq;
                    cp.bytes += stored.body_len;
                    *chain = stored.chain;
                }
                None => {
                    let cp = Checkpoint {
                        first: seq,
                        last: seq,
                        prev_chain: hex::encode(stored.prev_chain),
                        chain: String::new(),
                        bytes: stored.body_len,
                    };
                    run = Some((cp, stored.chain));
                }
            }
        }
        close(&mut run, &mut plan);
        Ok(plan)
    }

    /// Deletes the records of every pruned range that are still stored, with their
    /// index entries and delivery states; returns how many. Idempotent.
    pub fn sweep_pruned(&self) -> Result<u64, JournalError> {
        let trees = &self.inner.trees;
        let mut removed = 0u64;
        for item in trees.idx_pruned.iter() {
            let (k, _) = item?;
            let Some(PrunedRange { first, last, .. }) = PrunedRange::from_key(&k) else {
                continue;
            };
            for item in trees.records.range(seq_key(first)..=seq_key(last)) {
                let (k, v) = item?;
                let seq = key_seq(&k).ok_or_else(|| JournalError::corrupt(0, "malformed key"))?;
                let stored = decode(seq, &v)?;
                trees.remove_index(&index::entries(seq, stored.time_ms, &stored.header))?;
                trees.remove_state(seq)?;
                trees.resync.remove(&k)?;
                trees.unconfirmed.remove(&k)?;
                trees.records.remove(&k)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.inner.sync_storage()?;
            tracing::info!(records = removed, "pruned records removed");
        }
        Ok(removed)
    }
}
