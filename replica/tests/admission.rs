//! Who may stream: token, replica certificate and name, client certificates, protocol
//! version and epoch fencing.

mod common;

use std::time::Duration;

use common::*;
use levee_replica::frame::{Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use levee_replica::receiver::EPOCH_KEY;
use levee_replica::shipper;
use tokio_util::sync::CancellationToken;

fn stored_epoch(journal: &levee_journal::Journal) -> Option<u64> {
    journal
        .get_meta(EPOCH_KEY)
        .unwrap()
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_nothing_is_written() {
    let pki = pki();
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    for token in [&b"0123456789abcdef-replication-secreT"[..], b"", b"short"] {
        let mut conn = hand(&pki, replica.addr).await;
        let reason = refused(greet(&mut conn, &hello(1, token)).await);
        assert!(reason.contains("authentication failed"), "{reason}");
        expect_closed(&mut conn).await;
    }
    // The real shipper with another token (and with none) reports the refusal.
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 10, "p").await;
    for token in [Some(pki.other_token("another-token-of-16-bytes")), None] {
        let mut settings = shipper_settings(&pki, replica.addr, 1);
        settings.token = token;
        let stop = CancellationToken::new();
        let status = shipper::spawn(primary.clone(), settings, stop.clone());
        wait_error(&status, "authentication failed").await;
        assert!(!status.current().connected);
        assert_eq!(status.current().acked, 0);
        stop.cancel();
    }
    assert_eq!(replica.journal.tip(), (0, [0; 32]));
    // A refused primary raised no epoch either.
    assert_eq!(stored_epoch(&replica.journal), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_server_name_fails_the_handshake() {
    let pki = pki();
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    // Trusting another certificate than the replica's.
    let other_ca =
        std::sync::Arc::new(levee_replica::tls::client_config(&pki.other_cert, None).unwrap());
    let err = tls_connect(replica.addr, other_ca.clone(), SERVER_NAME)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // The right CA, but the replica's certificate does not carry this name.
    let err = tls_connect(replica.addr, pki.client_tls(None), "elsewhere.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 10, "p").await;
    let mut settings = shipper_settings(&pki, replica.addr, 1);
    settings.tls = other_ca;
    let stop = CancellationToken::new();
    let status = shipper::spawn(primary.clone(), settings, stop.clone());
    wait_error(&status, "TLS").await;
    stop.cancel();
    let mut settings = shipper_settings(&pki, replica.addr, 1);
    settings.server_name = server_name("elsewhere.test");
    let stop = CancellationToken::new();
    let status = shipper::spawn(primary.clone(), settings, stop.clone());
    wait_error(&status, "TLS").await;
    assert_eq!(status.current().acked, 0);
    stop.cancel();
    assert_eq!(replica.journal.tip(), (0, [0; 32]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_trusted_client_certificate() {
    let pki = pki();
    let auth = ReplicaAuth {
        token: None,
        client_ca: Some(&pki.client_cert),
        idle_timeout: Duration::from_secs(5),
        applied: None,
    };
    let replica = start_replica(&pki, auth).await;

    // No client certificate, or one the replica does not trust: with TLS 1.3 the client
    // may finish its side of the handshake, but the session never gets a Welcome.
    let untrusted = (pki.other_cert.as_path(), pki.other_key.as_path());
    for client in [None, Some(untrusted)] {
        match tls_connect(replica.addr, pki.client_tls(client), SERVER_NAME).await {
            Err(_) => {}
            Ok(tls) => {
                let mut conn = levee_replica::conn::FrameConn::new(tls);
                let answer = greet(&mut conn, &hello(1, b"")).await;
                assert!(answer.is_err(), "{client:?} was answered {answer:?}");
            }
        }
    }
    assert_eq!(replica.journal.head(), 0);

    // The trusted certificate, no token: welcomed, and the real shipper streams.
    let client = (pki.client_cert.as_path(), pki.client_key.as_path());
    let tls = tls_connect(replica.addr, pki.client_tls(Some(client)), SERVER_NAME)
        .await
        .unwrap();
    let mut conn = levee_replica::conn::FrameConn::new(tls);
    let welcome = greet(&mut conn, &hello(1, b"")).await.unwrap();
    assert!(
        matches!(
            welcome,
            Frame::Welcome {
                last_durable: 0,
                ..
            }
        ),
        "{welcome:?}"
    );
    drop(conn);

    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 60, "p").await;
    let mut settings = shipper_settings(&pki, replica.addr, 1);
    settings.token = None;
    settings.tls = pki.client_tls(Some(client));
    let stop = CancellationToken::new();
    let status = shipper::spawn(primary.clone(), settings, stop.clone());
    assert!(status.wait_acked(60, LIMIT).await, "{:?}", status.current());
    assert_same(&primary, &replica.journal);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_are_negotiated_and_refused_with_a_reason() {
    let pki = pki();
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    let with = |version, min_version| Frame::Hello {
        version,
        min_version,
        node: "future".into(),
        epoch: 1,
        token: TOKEN.as_bytes().to_vec(),
    };
    // A newer peer that can no longer speak ours, and an ancient one.
    for (version, min) in [(PROTOCOL_VERSION + 2, PROTOCOL_VERSION + 1), (0, 0)] {
        let mut conn = hand(&pki, replica.addr).await;
        let reason = refused(greet(&mut conn, &with(version, min)).await);
        let ours = format!("{MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}");
        assert!(reason.contains("not supported"), "{reason}");
        assert!(reason.contains(&ours), "{reason} should name {ours}");
        expect_closed(&mut conn).await;
    }
    // A newer peer that still speaks ours is welcomed in our version.
    let mut conn = hand(&pki, replica.addr).await;
    let welcome = greet(&mut conn, &with(PROTOCOL_VERSION + 3, MIN_PROTOCOL_VERSION)).await;
    assert!(
        matches!(welcome, Ok(Frame::Welcome { version, .. }) if version == PROTOCOL_VERSION),
        "{welcome:?}"
    );
    assert_eq!(replica.journal.head(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_epoch_is_fenced_and_the_epoch_survives_a_reopen() {
    let pki = pki();
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    let (conn, welcome) = welcomed(&pki, replica.addr, 5).await;
    assert!(
        matches!(welcome, Frame::Welcome { epoch: 5, .. }),
        "{welcome:?}"
    );
    drop(conn);
    assert_eq!(stored_epoch(&replica.journal), Some(5));

    let mut conn = hand(&pki, replica.addr).await;
    let reason = refused(greet(&mut conn, &hello(3, TOKEN.as_bytes())).await);
    assert!(reason.contains("fenced"), "{reason}");
    assert_eq!(stored_epoch(&replica.journal), Some(5), "not lowered");
    // The same epoch again is fine (a primary reconnecting).
    drop(welcomed(&pki, replica.addr, 5).await);

    // The real shipper with an old epoch says why it cannot stream.
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 10, "p").await;
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, replica.addr, 3),
        stop.clone(),
    );
    wait_error(&status, "fenced").await;
    stop.cancel();
    assert_eq!(replica.journal.head(), 0);

    // The stored epoch is durable: after a reopen epoch 3 is still fenced.
    let (journal, dir) = replica.stop_and_reopen().await;
    assert_eq!(stored_epoch(&journal), Some(5));
    let replica = serve_replica(&pki, ReplicaAuth::token(&pki), journal, dir).await;
    let mut conn = hand(&pki, replica.addr).await;
    let reason = refused(greet(&mut conn, &hello(3, TOKEN.as_bytes())).await);
    assert!(reason.contains("fenced"), "{reason}");
    // A newer epoch takes over and streams.
    let stop = CancellationToken::new();
    let status = shipper::spawn(
        primary.clone(),
        shipper_settings(&pki, replica.addr, 6),
        stop.clone(),
    );
    assert!(status.wait_acked(10, LIMIT).await, "{:?}", status.current());
    assert_eq!(stored_epoch(&replica.journal), Some(6));
    assert_same(&primary, &replica.journal);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_fences_a_primary_that_is_already_streaming() {
    let pki = pki();
    let replica = start_replica(&pki, ReplicaAuth::token(&pki)).await;
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open_journal(primary_dir.path());
    fill(&primary, 1, 20, "p").await;

    let (mut old, _) = welcomed(&pki, replica.addr, 3).await;
    old.send(&Frame::Records {
        records: records(&primary, 1, 5),
    })
    .await
    .unwrap();
    assert_eq!(old.recv(LIMIT).await.unwrap(), Frame::Ack { seq: 5 });

    // The new primary (epoch 5) says Hello; the replica stores its epoch.
    let mut new = hand(&pki, replica.addr).await;
    new.send(&hello(5, TOKEN.as_bytes())).await.unwrap();
    eventually("epoch 5 stored", LIMIT, || {
        stored_epoch(&replica.journal) == Some(5)
    })
    .await;

    // The old primary is fenced now: its next batch must not be written.
    old.send(&Frame::Records {
        records: records(&primary, 6, 10),
    })
    .await
    .unwrap();
    let answer = old.recv(LIMIT).await;
    assert!(
        !matches!(answer, Ok(Frame::Ack { .. })),
        "a fenced primary's batch was acked: {answer:?}"
    );
    assert_eq!(
        replica.journal.head(),
        5,
        "a fenced primary's batch was written"
    );
    // And the new primary gets its Welcome while the old one is still connected.
    let welcome = new.recv(Duration::from_secs(3)).await;
    assert!(
        matches!(welcome, Ok(Frame::Welcome { epoch: 5, .. })),
        "{welcome:?}"
    );
}
