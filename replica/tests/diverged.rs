//! A replica whose journal is not a prefix of the primary's is refused by the shipper and
//! never modified.

mod common;

use std::time::Duration;

use common::*;
use levee_journal::Journal;
use levee_replica::shipper;
use tokio_util::sync::CancellationToken;

/// Runs the real shipper against `replica` until it reports a divergence; the replica
/// must be untouched, also after further attempts.
async fn shipper_refuses(pki: &Pki, primary: &Journal, replica: &Replica, needle: &str) {
    let before = replica.journal.tip();
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(pki, replica.addr, 1),
        stop.clone(),
    );
    let error = wait_error(&status, "diverged").await;
    assert!(error.contains(needle), "{error} should say {needle}");
    // The shipper retries with backoff (100, 200, 400 ms): through further attempts it
    // never gets to stream.
    let until = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < until {
        let state = status.current();
        assert!(!state.connected && state.acked == 0, "{state:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(replica.journal.tip(), before);
    assert_intact(&replica.journal);
    stop.cancel();
}

async fn primary_with(n: u64) -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    fill(&journal, 1, n, "p").await;
    (dir, journal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_different_record_at_its_head_is_refused() {
    let pki = pki();
    let (_dir, primary) = primary_with(40).await;
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    // A true prefix 1..=15, then a record of the replica's own at 16 (as if it had
    // accepted mail itself during a failover).
    replica
        .journal
        .append_replicated(records(&primary, 1, 15))
        .await
        .unwrap();
    replica.journal.append(record(16, "local")).await.unwrap();
    assert_eq!(replica.journal.head(), 16);
    assert_ne!(
        replica.journal.last_chain(),
        primary.get(16).unwrap().unwrap().chain
    );
    shipper_refuses(&pki, &primary, &replica, "record 16 differs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_journal_is_refused() {
    let pki = pki();
    let (_dir, primary) = primary_with(40).await;
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    // Same seqs, other content from the first record on.
    fill(&replica.journal, 1, 20, "elsewhere").await;
    shipper_refuses(&pki, &primary, &replica, "record 20 differs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ahead_of_the_primary_is_refused_then_streamed_once_it_matches() {
    let pki = pki();
    let (_dir, primary) = primary_with(30).await;
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    // The replica holds the primary's 1..=30 plus 31..=35 the primary does not have (yet).
    let (_other_dir, longer) = primary_with(0).await;
    longer
        .append_replicated(records(&primary, 1, 30))
        .await
        .unwrap();
    fill(&longer, 31, 5, "p").await;
    replica
        .journal
        .append_replicated(records(&longer, 1, 35))
        .await
        .unwrap();
    shipper_refuses(&pki, &primary, &replica, "ends at 30").await;

    // A primary that holds the same 35 records (the replica is a prefix again) streams on.
    fill(&longer, 36, 25, "p").await;
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        longer.clone(),
        shipper_settings(&pki, replica.addr, 1),
        stop.clone(),
    );
    assert!(status.wait_acked(60, LIMIT).await, "{:?}", status.current());
    assert_same(&longer, &replica.journal);
    stop.cancel();
}
