//! The journal streams to a warm replica site: messages sent through levee at the primary
//! reach the replica's Dovecot unchanged, and the replica journal is a byte-identical,
//! prefix-consistent copy.

use levee_journal::RecordKind;
use levee_tests::{LeveeMode, ReplicaSite, Site, sample_message, send_sample};

#[test]
fn message_reaches_replica_mailbox_and_journal_byte_identical() {
    let mut replica = ReplicaSite::start("replica", LeveeMode::InProcess);
    let mut primary = Site::start_with(
        "primary",
        LeveeMode::InProcess,
        &replica.link.primary_section("async", "2s"),
    );
    let ids: Vec<String> = (0..5).map(|i| format!("repl-{i}@example.org")).collect();
    for id in &ids {
        let verdict = send_sample(
            primary.dir.path(),
            primary.levee.ports.relay,
            id,
            "alice@example.test",
        );
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    replica.wait_for_messages("alice", &ids, 30);
    // Over IMAP at the replica: the client's bytes, below the trace headers.
    let fetched = levee_tests::clients::imap_fetch(
        replica.stack.imap_addr(),
        "alice",
        &primary.password("alice"),
    );
    assert_eq!(
        fetched.len(),
        ids.len(),
        "each message exactly once at the replica"
    );
    for id in &ids {
        let sent = sample_message(id, "alice@example.test");
        assert!(
            fetched.iter().any(|m| m.ends_with(&sent)),
            "{id} altered on its way to the replica"
        );
    }
    primary.wait_for_messages("alice", &ids, 15);

    primary.levee.stop();
    replica.daemon.stop();
    let source = primary.open_journal();
    let copy = replica.open_journal();
    assert_eq!(copy.head(), source.head());
    assert_eq!(copy.last_chain(), source.last_chain());
    for (a, b) in source
        .read_from(1, usize::MAX)
        .unwrap()
        .iter()
        .zip(copy.read_from(1, usize::MAX).unwrap().iter())
    {
        assert_eq!(a, b, "replica record {} differs", a.seq);
        if let RecordKind::Message(m) = &b.kind {
            assert!(
                ids.iter()
                    .any(|id| m.message_id.as_deref() == Some(id.as_str()))
            );
        }
    }
    assert!(source.verify().unwrap().first_broken.is_none());
    assert!(copy.verify().unwrap().first_broken.is_none());
    assert!(
        copy.undelivered(10).unwrap().is_empty(),
        "every record applied"
    );
}

#[test]
fn wrong_token_is_refused_and_nothing_is_written() {
    let mut replica = ReplicaSite::start("replica-auth", LeveeMode::InProcess);
    let wrong = replica.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-right-token-at-all-0000\n").unwrap();
    let mut link = replica.link.clone();
    link.token_file = wrong;
    let mut primary = Site::start_with(
        "primary-auth",
        LeveeMode::InProcess,
        &link.primary_section("async", "2s"),
    );
    let verdict = send_sample(
        primary.dir.path(),
        primary.levee.ports.relay,
        "refused-stream@example.org",
        "alice@example.test",
    );
    // Async mode: the client is served regardless of the replica.
    assert_eq!(verdict["code"], 250, "{verdict}");
    primary.wait_for_messages("alice", &["refused-stream@example.org".into()], 15);
    std::thread::sleep(std::time::Duration::from_secs(2));
    primary.levee.stop();
    replica.daemon.stop();
    assert_eq!(
        replica.open_journal().head(),
        0,
        "a refused primary wrote something"
    );
    assert!(replica.stack.inbox_messages("alice").unwrap().is_empty());
    assert!(
        replica.daemon.log().is_empty() || !replica.daemon.log().contains("not-the-right-token"),
        "token in the log"
    );
}
