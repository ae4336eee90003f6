//! A hand-driven primary sending what a correct shipper never would: tampered, misplaced
//! or duplicated batches, garbage, oversized and truncated frames, frames out of order,
//! silence. Each session ends with a Refused frame or a closed connection, the replica
//! journal is left exactly as it was, and the receiver goes on serving the real shipper.

mod common;

use std::time::{Duration, Instant};

use common::*;
use levee_journal::{Journal, Record, RecordKind};
use levee_replica::frame::{Frame, MAX_FRAME_BYTES};
use levee_replica::shipper;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// A primary with 60 records, and a replica (idle timeout 300 ms) already holding 1..=10.
async fn setup() -> (Pki, TempDir, Journal, Replica) {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let primary = open_journal(dir.path());
    fill(&primary, 1, 60, "p").await;
    let mut auth = ReplicaAuth::token(&pki);
    auth.idle_timeout = Duration::from_millis(300);
    let replica = start_replica(&pki, auth).await;
    replica
        .journal
        .append_replicated(records(&primary, 1, 10))
        .await
        .unwrap();
    (pki, dir, primary, replica)
}

/// The replica still holds exactly 1..=10, intact; then the real shipper streams the rest.
async fn unchanged_then_recovers(pki: &Pki, primary: &Journal, replica: &Replica) {
    assert_eq!(
        replica.journal.tip(),
        primary
            .get(10)
            .map(|r| {
                let r = r.unwrap();
                (r.seq, r.chain)
            })
            .unwrap()
    );
    assert_intact(&replica.journal);
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(pki, replica.addr, 1),
        stop.clone(),
    );
    assert!(status.wait_acked(60, LIMIT).await, "{:?}", status.current());
    assert_same(primary, &replica.journal);
    stop.cancel();
}

fn body_mut(record: &mut Record) -> &mut Vec<u8> {
    match &mut record.kind {
        RecordKind::Message(m) => &mut m.body,
        _ => panic!("record {} has no body", record.seq),
    }
}

/// Sends `batch` on a welcomed session and expects it refused naming `seq` and `why`.
async fn refused_batch(pki: &Pki, replica: &Replica, batch: Vec<Record>, seq: u64, why: &str) {
    let (mut conn, welcome) = welcomed(pki, replica.addr, 1).await;
    assert!(matches!(
        welcome,
        Frame::Welcome {
            last_durable: 10,
            ..
        }
    ));
    conn.send(&Frame::Records { records: batch }).await.unwrap();
    let reason = refused(conn.recv(LIMIT).await);
    assert!(reason.contains(&format!("record {seq}")), "{reason}");
    assert!(reason.contains(why), "{reason} should say {why}");
    expect_closed(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_misplaced_and_duplicate_batches_are_refused_whole() {
    let (pki, _dir, primary, replica) = setup().await;
    let good = || records(&primary, 11, 20);

    // `fill` appends concurrently, so which workload record sits at which seq varies:
    // tamper with a message that has a body, past the batch's first records.
    let batch = good();
    let v = (2..batch.len())
        .find(|&i| !batch[i].kind.body().is_empty())
        .expect("a message with a body in 13..=20");
    let seq = batch[v].seq;

    // One body byte flipped in the middle of the batch: the records before it are fine
    // but must not be written either (all or nothing).
    let mut batch = good();
    body_mut(&mut batch[v])[0] ^= 1;
    refused_batch(&pki, &replica, batch, seq, "body_sha256").await;
    // The body and its hash changed consistently: the chain no longer matches.
    let mut batch = good();
    body_mut(&mut batch[v]).push(b'!');
    batch[v].body_sha256 = sha256(batch[v].kind.body());
    refused_batch(&pki, &replica, batch, seq, "chain").await;
    // An envelope field changed: only the chain hash covers it.
    let mut batch = good();
    if let RecordKind::Message(m) = &mut batch[v].kind {
        m.rcpt_to.push("intruder@example.com".into());
    }
    refused_batch(&pki, &replica, batch, seq, "chain").await;
    // The chain hash itself altered.
    let mut batch = good();
    batch[v].chain[0] ^= 1;
    refused_batch(&pki, &replica, batch, seq, "chain").await;
    // A gap (starts at 12), and a duplicate (starts at 10).
    refused_batch(
        &pki,
        &replica,
        records(&primary, 12, 20),
        12,
        "expected seq 11",
    )
    .await;
    refused_batch(
        &pki,
        &replica,
        records(&primary, 10, 20),
        10,
        "expected seq 11",
    )
    .await;
    // Records of another journal at the right seqs.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open_journal(other_dir.path());
    fill(&other, 1, 20, "other").await;
    refused_batch(&pki, &replica, records(&other, 11, 20), 11, "prev_chain").await;

    unchanged_then_recovers(&pki, &primary, &replica).await;
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A good session that sends raw bytes below the frame layer, then expects the close.
async fn raw_session(pki: &Pki, replica: &Replica, hello_first: bool, bytes: &[u8]) {
    let mut tls = tls_connect(replica.addr, pki.client_tls(None), SERVER_NAME)
        .await
        .unwrap();
    if hello_first {
        let mut conn = levee_replica::conn::FrameConn::new(tls);
        let welcome = greet(&mut conn, &hello(1, TOKEN.as_bytes())).await;
        assert!(matches!(welcome, Ok(Frame::Welcome { .. })), "{welcome:?}");
        tls = conn.into_inner();
    }
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let mut conn = levee_replica::conn::FrameConn::new(tls);
    expect_closed(&mut conn).await;
    // Closed because of the bytes, not because the idle timeout ran out.
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_truncated_frames_end_the_session() {
    let (pki, _dir, primary, replica) = setup().await;
    let too_large = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
    for hello_first in [false, true] {
        // Not a frame at all (an HTTP request: its first 4 bytes are a huge length).
        raw_session(&pki, &replica, hello_first, b"GET / HTTP/1.1\r\n\r\n").await;
        // A well-formed length around bytes that are not a frame.
        raw_session(
            &pki,
            &replica,
            hello_first,
            &[0, 0, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 0xff],
        )
        .await;
        // Unknown flags, and a "compressed" payload that is not zstd.
        raw_session(&pki, &replica, hello_first, &[0, 0, 0, 3, 7, 1, 2]).await;
        raw_session(&pki, &replica, hello_first, &[0, 0, 0, 5, 1, 1, 2, 3, 4]).await;
        // An announced length over MAX_FRAME_BYTES, with a little of it following.
        let mut oversized = too_large.to_vec();
        oversized.extend_from_slice(&[0; 1024]);
        raw_session(&pki, &replica, hello_first, &oversized).await;
    }

    // A truncated frame, then the primary closes its side.
    for hello_first in [false, true] {
        let mut tls = tls_connect(replica.addr, pki.client_tls(None), SERVER_NAME)
            .await
            .unwrap();
        if hello_first {
            let mut conn = levee_replica::conn::FrameConn::new(tls);
            greet(&mut conn, &hello(1, TOKEN.as_bytes())).await.unwrap();
            tls = conn.into_inner();
        }
        let wire = levee_replica::frame::encode(&Frame::Records {
            records: records(&primary, 11, 12),
        })
        .unwrap();
        tls.write_all(&(wire.len() as u32).to_be_bytes())
            .await
            .unwrap();
        tls.write_all(&wire[..wire.len() / 2]).await.unwrap();
        tls.shutdown().await.unwrap();
        let mut conn = levee_replica::conn::FrameConn::new(tls);
        expect_closed(&mut conn).await;
    }
    unchanged_then_recovers(&pki, &primary, &replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_out_of_order_are_refused() {
    let (pki, _dir, primary, replica) = setup().await;
    // A valid next batch, but before Hello: nothing may be written without admission.
    let mut conn = hand(&pki, replica.addr).await;
    conn.send(&Frame::Records {
        records: records(&primary, 11, 15),
    })
    .await
    .unwrap();
    let reason = refused(conn.recv(LIMIT).await);
    assert!(reason.contains("expected Hello"), "{reason}");
    expect_closed(&mut conn).await;
    assert_eq!(replica.journal.head(), 10);

    // A second Hello, and frames only the replica sends.
    let unexpected = [
        hello(1, TOKEN.as_bytes()),
        Frame::Ack { seq: 11 },
        Frame::Welcome {
            version: 1,
            node: "x".into(),
            epoch: 1,
            last_durable: 0,
            last_chain: [0; 32],
        },
    ];
    for frame in unexpected {
        let (mut conn, _) = welcomed(&pki, replica.addr, 1).await;
        conn.send(&frame).await.unwrap();
        let reason = refused(conn.recv(LIMIT).await);
        assert!(reason.contains("unexpected frame"), "{reason}");
        expect_closed(&mut conn).await;
    }
    // A heartbeat is answered, and an empty batch is acked at the head.
    let (mut conn, _) = welcomed(&pki, replica.addr, 1).await;
    conn.send(&Frame::Heartbeat {
        time_ms: 1,
        head: 60,
    })
    .await
    .unwrap();
    assert!(matches!(
        conn.recv(LIMIT).await,
        Ok(Frame::Heartbeat { head: 10, .. })
    ));
    conn.send(&Frame::Records { records: vec![] })
        .await
        .unwrap();
    assert_eq!(conn.recv(LIMIT).await.unwrap(), Frame::Ack { seq: 10 });
    drop(conn);
    unchanged_then_recovers(&pki, &primary, &replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peers_are_dropped_after_the_idle_timeout() {
    let (pki, _dir, primary, replica) = setup().await;
    let idle = Duration::from_millis(300);
    let closed_within = |started: Instant| {
        let waited = started.elapsed();
        assert!(
            waited >= idle - Duration::from_millis(50),
            "closed early: {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "closed late: {waited:?}");
    };

    // TCP only, no TLS handshake.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
        .await
        .expect("a peer that never starts TLS is dropped");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    closed_within(started);

    // TLS, then no Hello.
    let mut conn = hand(&pki, replica.addr).await;
    let started = Instant::now();
    expect_closed(&mut conn).await;
    closed_within(started);

    // Welcomed, then silent: it holds the writer lock only until the idle timeout, so the
    // real shipper connecting meanwhile gets its turn.
    let (mut stalled, _) = welcomed(&pki, replica.addr, 1).await;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, replica.addr, 1),
        stop.clone(),
    );
    expect_closed(&mut stalled).await;
    closed_within(started);
    assert!(status.wait_acked(60, LIMIT).await, "{:?}", status.current());
    assert_same(&primary, &replica.journal);
    stop.cancel();
}
