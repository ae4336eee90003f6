//! `[retention]` in `levee run`: a background pass that prunes journaled mail older than
//! `days`, and the bound that keeps pruning behind the replica.
//!
//! A record may only go once the replica has it: the replica's journal continues the
//! same chain and must receive every record, pruned ones included, before the prune
//! record that removes them there too. The running levee keeps what the replica has
//! acknowledged in the journal's meta ([`REPLICA_ACKED_KEY`]), so that `levee journal
//! prune` on a stopped journal respects the same bound.

use std::time::{Duration, Instant};

use levee_config::Retention;
use levee_journal::{Journal, JournalError, PruneReport, Seq};
use tokio_util::sync::CancellationToken;

use crate::replication::Replicator;

/// Journal meta key: the highest seq the replica has acknowledged, big-endian u64.
pub const REPLICA_ACKED_KEY: &str = "replica_acked";

/// How often the replica's acknowledged seq is written down.
const ACKED_EVERY: Duration = Duration::from_secs(5);

/// Actor of the prunes `[retention]` makes.
const ACTOR: &str = "retention";

/// The highest seq that may be pruned: the replica's acknowledged seq when this journal
/// is replicated, else the head.
pub fn prunable_through(journal: &Journal) -> Seq {
    match journal.get_meta(REPLICA_ACKED_KEY) {
        Ok(Some(bytes)) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(be) => u64::from_be_bytes(be).min(journal.head()),
            Err(_) => 0,
        },
        _ => journal.head(),
    }
}

/// Prunes everything due (accepted before `before_ms`, seq at most `through`), pass after
/// pass; `progress` hears the running total after each pass that pruned.
pub async fn prune_all(
    journal: &Journal,
    actor: String,
    before_ms: u64,
    through: Seq,
    mut progress: impl FnMut(u64),
) -> Result<PruneReport, JournalError> {
    let mut total = PruneReport::default();
    let mut from = 1;
    loop {
        let now = crate::smtp::now_ms();
        let pass = journal
            .prune(now, actor.clone(), before_ms, (from, through))
            .await?;
        total.pruned += pass.pruned;
        total.bytes += pass.bytes;
        total.held += pass.held;
        total.record = pass.record.or(total.record);
        if pass.pruned > 0 {
            progress(total.pruned);
        }
        match pass.next {
            Some(next) => from = next,
            None => return Ok(total),
        }
    }
}

/// The background task, when there is anything for it to do.
pub fn task(
    journal: Journal,
    retention: Option<Retention>,
    replicator: Option<Replicator>,
    shutdown: CancellationToken,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    if retention.is_none() && replicator.is_none() {
        return None;
    }
    if replicator.is_some() && matches!(journal.get_meta(REPLICA_ACKED_KEY), Ok(None)) {
        // Until the replica says what it has, nothing may be pruned.
        note_acked(&journal, 0);
    }
    Some(run(journal, retention, replicator, shutdown))
}

fn note_acked(journal: &Journal, acked: Seq) {
    if let Err(err) = journal.set_meta(REPLICA_ACKED_KEY, &acked.to_be_bytes()) {
        tracing::warn!(%err, "cannot note the replica's acknowledged seq");
    }
}

async fn run(
    journal: Journal,
    retention: Option<Retention>,
    replicator: Option<Replicator>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(ACKED_EVERY);
    // The first pass soon after start, then every `interval`.
    let mut last_pass: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(replicator) = &replicator {
            let acked = replicator.status.current().acked;
            if acked > 0 {
                note_acked(&journal, acked);
            }
        }
        let Some(retention) = &retention else {
            continue;
        };
        if last_pass.is_some_and(|at| at.elapsed() < retention.interval) {
            continue;
        }
        last_pass = Some(Instant::now());
        let keep_ms = u64::from(retention.days) * 86_400_000;
        let before_ms = crate::smtp::now_ms().saturating_sub(keep_ms);
        let through = prunable_through(&journal);
        match prune_all(&journal, ACTOR.into(), before_ms, through, |_| {}).await {
            Ok(report) if report.pruned > 0 => tracing::info!(
                records = report.pruned,
                bytes = report.bytes,
                held = report.held,
                "retention pass pruned old mail"
            ),
            Ok(report) => tracing::debug!(held = report.held, "retention pass: nothing due"),
            Err(err) => tracing::error!(%err, "retention pass failed; nothing more pruned"),
        }
    }
    if let Some(replicator) = &replicator {
        let acked = replicator.status.current().acked;
        if acked > 0 {
            note_acked(&journal, acked);
        }
    }
}

#[cfg(test)]
mod tests {
    use levee_journal::{
        ClientInfo, DeliveryState, DeliveryStatus, JournalOptions, MessageRecord, NewRecord,
        RecordKind,
    };

    use super::*;

    fn message(time_ms: u64) -> NewRecord {
        NewRecord {
            time_ms,
            kind: RecordKind::Message(MessageRecord {
                mail_from: "a@example.org".into(),
                rcpt_to: vec!["b@example.org".into()],
                client: ClientInfo::default(),
                message_id: None,
                body: b"Subject: x\r\n\r\nold mail\r\n".to_vec(),
            }),
        }
    }

    #[tokio::test]
    async fn the_background_pass_prunes_old_delivered_mail_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let now = crate::smtp::now_ms();
        let delivered = DeliveryState {
            status: DeliveryStatus::Delivered,
            attempts: 1,
            next_attempt_ms: now,
            last_reply: None,
            updated_ms: now,
        };
        // Two old and delivered, one old and still pending, one recent.
        for (time_ms, done) in [
            (now - 3 * 86_400_000, true),
            (now - 2 * 86_400_000, true),
            (now - 2 * 86_400_000, false),
            (now, true),
        ] {
            let seq = journal.append(message(time_ms)).await.unwrap().seq;
            if done {
                journal.set_state(seq, &delivered).unwrap();
            }
        }
        let retention = Retention {
            days: 1,
            interval: Duration::from_secs(3600),
        };
        let shutdown = CancellationToken::new();
        let pass = task(journal.clone(), Some(retention), None, shutdown.clone()).unwrap();
        let running = tokio::spawn(pass);
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal.head() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        let present: Vec<Seq> = (1..=journal.head())
            .filter(|&s| journal.get(s).unwrap().is_some())
            .collect();
        assert_eq!(present, [3, 4, 5], "the prune record is 5");
        assert!(journal.verify().unwrap().is_intact());
        // Nothing to do without retention and replication.
        assert!(task(journal, None, None, CancellationToken::new()).is_none());
    }
}
