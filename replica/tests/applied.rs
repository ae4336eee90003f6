//! Apply progress: a replica that applies its journal tells a protocol-2 primary how far
//! its mail server has got, whenever that moves, and never sends the new frame to a
//! protocol-1 primary.

mod common;

use std::time::Duration;

use common::*;
use levee_journal::{Journal, Seq};
use levee_replica::frame::{Frame, MIN_PROTOCOL_VERSION};
use levee_replica::shipper;
use tokio_util::sync::CancellationToken;

/// Where the test's stand-in applier keeps its progress.
const PROGRESS: &str = "test_applied_through";

fn progress(journal: &Journal) -> Seq {
    journal
        .get_meta(PROGRESS)
        .ok()
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

fn set_progress(journal: &Journal, seq: Seq) {
    journal.set_meta(PROGRESS, &seq.to_be_bytes()).unwrap();
}

async fn applying_replica(pki: &Pki) -> Replica {
    let mut auth = ReplicaAuth::token(pki);
    auth.applied = Some(progress);
    start_replica(pki, auth).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_learns_how_far_the_standby_has_applied() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let primary = open_journal(dir.path());
    fill(&primary, 1, 20, "p").await;
    let replica = applying_replica(&pki).await;
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, replica.addr, 1),
        stop.clone(),
    );
    assert!(status.wait_acked(20, LIMIT).await, "{:?}", status.current());
    // Durable is not applied: the stand-in applier has done nothing yet.
    eventually("the first report", LIMIT, || {
        status.current().applied == Some(0)
    })
    .await;
    assert!(!status.wait_applied(1, Duration::from_millis(300)).await);

    set_progress(&replica.journal, 12);
    assert!(
        status.wait_applied(12, LIMIT).await,
        "{:?}",
        status.current()
    );
    assert!(!status.wait_applied(13, Duration::from_millis(300)).await);
    set_progress(&replica.journal, 20);
    assert!(
        status.wait_applied(20, LIMIT).await,
        "{:?}",
        status.current()
    );
    assert_eq!(status.current().applied, Some(20));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_apply_never_reports() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let primary = open_journal(dir.path());
    fill(&primary, 1, 5, "p").await;
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, replica.addr, 1),
        stop.clone(),
    );
    assert!(status.wait_acked(5, LIMIT).await, "{:?}", status.current());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status.current().applied, None);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_1_primary_never_sees_the_new_frame() {
    let pki = pki();
    let replica = applying_replica(&pki).await;
    set_progress(&replica.journal, 3);
    let mut conn = hand(&pki, replica.addr).await;
    let old_hello = Frame::Hello {
        version: 1,
        min_version: MIN_PROTOCOL_VERSION,
        node: "old-primary".into(),
        epoch: 1,
        token: TOKEN.as_bytes().to_vec(),
    };
    let welcome = greet(&mut conn, &old_hello).await.unwrap();
    assert!(matches!(welcome, Frame::Welcome { .. }), "{welcome:?}");
    // Several report intervals pass; the only frame that comes is the heartbeat's answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send(&Frame::Heartbeat {
        time_ms: 1,
        head: 0,
    })
    .await
    .unwrap();
    assert!(
        matches!(conn.recv(LIMIT).await, Ok(Frame::Heartbeat { .. })),
        "a protocol-1 primary got a frame it cannot read"
    );

    // The same replica reports to a protocol-2 primary at once, once the old one has gone
    // (until the replica has seen that close it refuses a second primary).
    drop(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        let mut conn = hand(&pki, replica.addr).await;
        match greet(&mut conn, &hello(1, TOKEN.as_bytes())).await {
            Ok(Frame::Welcome { .. }) => break conn,
            other if tokio::time::Instant::now() < deadline => {
                drop(other);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the replica did not take the new primary: {other:?}"),
        }
    };
    assert_eq!(conn.recv(LIMIT).await.unwrap(), Frame::Applied { seq: 3 });
}
