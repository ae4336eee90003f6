//! The real shipper streaming to the real receiver: a full copy, live tailing, resuming
//! after the link is cut, and noticing a link that went silent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use levee_replica::shipper;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipper_streams_the_whole_journal_and_tails_it() {
    let pki = pki();
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 500, "p").await;
    assert_eq!(primary.head(), 500);
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;

    let started = Instant::now();
    let stop = CancellationToken::new();
    let mut settings = shipper_settings(&pki, replica.addr, 1);
    // This test asserts that the session never breaks: give a loaded 2-core machine more
    // than the 500 ms of silence the other tests allow before the shipper reconnects.
    settings.heartbeat = Duration::from_millis(250);
    let status = shipper::spawn(primary.clone(), settings, stop.clone());
    // While it streams, the shipper never believes more is durable than the replica holds.
    let deadline = Instant::now() + LIMIT;
    loop {
        let acked = status.current().acked;
        let durable = replica.journal.head();
        assert!(
            acked <= durable,
            "acked {acked} but replica holds {durable}"
        );
        if acked == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {acked}: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("500 records streamed in {:?}", started.elapsed());
    assert!(status.wait_acked(500, Duration::from_secs(1)).await);
    let state = status.current();
    assert!(state.connected, "{state:?}");
    assert_eq!(state.last_error, None);
    assert_same(&primary, &replica.journal);

    // wait_acked is bounded: nothing beyond the head is ever acknowledged.
    let waited = Instant::now();
    assert!(!status.wait_acked(501, Duration::from_millis(200)).await);
    assert!(waited.elapsed() < Duration::from_secs(2));

    // Live tailing: records appended while connected follow without a reconnect.
    let waiter = {
        let status = status.clone();
        tokio::spawn(async move { status.wait_acked(540, LIMIT).await })
    };
    fill(&primary, 501, 40, "p").await;
    assert!(waiter.await.unwrap(), "{:?}", status.current());
    assert_eq!(
        status.current().last_error,
        None,
        "no reconnect while tailing"
    );
    assert_same(&primary, &replica.journal);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_from_the_replicas_durable_head_after_a_cut() {
    let pki = pki();
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    // 300 records, 12 of them 200 KiB of noise: about 2.5 MB on the wire.
    fill(&primary, 1, 300, "p").await;
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    let relay = Relay::start(replica.addr).await;
    relay.cut_after(1024 * 1024);

    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, relay.addr, 1),
        stop.clone(),
    );
    eventually("the relay cuts the link mid-stream", LIMIT, || {
        !relay.is_up()
    })
    .await;
    eventually("the shipper notices the cut", LIMIT, || {
        !status.current().connected
    })
    .await;
    let error = status.current().last_error.unwrap();
    // Mid-stream: part of the journal arrived, not all of it.
    let at_cut = replica.journal.head();
    assert!(at_cut < primary.head(), "cut came too late: {at_cut}");
    assert!(status.current().acked <= at_cut);
    assert_intact(&replica.journal);

    // While the link is down the primary goes on accepting mail, and the shipper retries.
    fill(&primary, 301, 60, "p").await;
    let accepted = relay.accepted.load(std::sync::atomic::Ordering::SeqCst);
    relay.restore();
    assert!(
        status.wait_acked(primary.head(), LIMIT).await,
        "did not resume: {:?} (replica at {})",
        status.current(),
        replica.journal.head()
    );
    assert!(relay.accepted.load(std::sync::atomic::Ordering::SeqCst) > accepted);
    assert_eq!(relay.cuts(), 1);
    // A resent (duplicate) or skipped record would have been refused by the replica
    // ("expected seq ..."), which the shipper would report; the last error is the cut.
    let last = status.current().last_error.unwrap();
    assert!(!last.contains("refused"), "{last} (cut: {error})");
    assert_same(&primary, &replica.journal);

    // A second, on-demand cut while tailing, then recovery again.
    relay.cut();
    fill(&primary, 361, 10, "p").await;
    relay.restore();
    assert!(status.wait_acked(primary.head(), LIMIT).await);
    assert_same(&primary, &replica.journal);
    stop.cancel();
}

// Regression: the shipper used to re-arm its silence timeout on every heartbeat tick, so a
// black-holed replica was never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipper_drops_a_replica_that_went_silent() {
    let pki = pki();
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 20, "p").await;
    let mut auth = ReplicaAuth::token(&pki);
    // Only the shipper's own silence detection is under test.
    auth.idle_timeout = Duration::from_secs(60);
    let replica = start_replica(&pki, auth).await;
    let relay = Relay::start(replica.addr).await;
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, relay.addr, 1),
        stop.clone(),
    );
    assert!(status.wait_acked(20, LIMIT).await);
    assert!(status.current().connected);

    // A black hole: the TCP connection stays open but nothing comes back.
    relay.freeze(true);
    let frozen_at = Instant::now();
    // Heartbeat 100 ms: silence is 500 ms. Allow a generous 3 s.
    let deadline = Duration::from_secs(3);
    while status.current().connected {
        assert!(
            frozen_at.elapsed() < deadline,
            "shipper still 'connected' {deadline:?} after the replica went silent: {:?}",
            status.current()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.freeze(false);
    relay.cut();
    relay.restore();
    fill(&primary, 21, 5, "p").await;
    assert!(status.wait_acked(25, LIMIT).await);
    stop.cancel();
}
