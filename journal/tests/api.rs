//! Behaviour of the public API on a healthy journal.

mod common;

use common::{T0, audit, message, open, simple};
use levee_journal::{
    DeliveryState, DeliveryStatus, JournalError, MailboxChange, MailboxRecord, MessageRef,
    NewRecord, RecordKind,
};
use sha2::{Digest, Sha256};

/// Independent implementation of the chain formula in the crate docs.
fn documented_chain(prev: &[u8; 32], rec: &levee_journal::Record) -> [u8; 32] {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    fn o(out: &mut Vec<u8>, v: &Option<String>) {
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                s(out, v);
            }
        }
    }
    let mut c = b"LJC1".to_vec();
    c.extend_from_slice(&rec.seq.to_be_bytes());
    c.extend_from_slice(&rec.time_ms.to_be_bytes());
    let body: &[u8] = match &rec.kind {
        RecordKind::Message(m) => {
            c.push(1);
            s(&mut c, &m.mail_from);
            c.extend_from_slice(&(m.rcpt_to.len() as u64).to_be_bytes());
            for r in &m.rcpt_to {
                s(&mut c, r);
            }
            o(&mut c, &m.client.addr);
            o(&mut c, &m.client.helo);
            o(&mut c, &m.client.authenticated_user);
            s(&mut c, &m.client.listener);
            c.push(u8::from(m.client.tls));
            o(&mut c, &m.message_id);
            &m.body
        }
        RecordKind::Audit(a) => {
            c.push(2);
            s(&mut c, &a.actor);
            s(&mut c, &a.action);
            s(&mut c, &a.detail);
            &[]
        }
        kind @ (RecordKind::Mailbox(m) | RecordKind::MailboxAtReplica(m)) => {
            c.push(if matches!(kind, RecordKind::Mailbox(_)) {
                3
            } else {
                4
            });
            s(&mut c, &m.user);
            fn strs(out: &mut Vec<u8>, v: &[String]) {
                out.extend_from_slice(&(v.len() as u64).to_be_bytes());
                for x in v {
                    s(out, x);
                }
            }
            fn r(out: &mut Vec<u8>, m: &MessageRef) {
                out.extend_from_slice(&m.uid.to_be_bytes());
                o(out, &m.trace);
                o(out, &m.message_id);
                out.extend_from_slice(&m.size.to_be_bytes());
            }
            match &m.change {
                MailboxChange::Append {
                    mailbox,
                    flags,
                    internal_date,
                    body,
                } => {
                    c.push(1);
                    s(&mut c, mailbox);
                    strs(&mut c, flags);
                    o(&mut c, internal_date);
                    body
                }
                MailboxChange::Flags { mailbox, messages } => {
                    c.push(2);
                    s(&mut c, mailbox);
                    c.extend_from_slice(&(messages.len() as u64).to_be_bytes());
                    for (m, flags) in messages {
                        r(&mut c, m);
                        strs(&mut c, flags);
                    }
                    &[]
                }
                MailboxChange::Expunge { mailbox, messages } => {
                    c.push(3);
                    s(&mut c, mailbox);
                    c.extend_from_slice(&(messages.len() as u64).to_be_bytes());
                    messages.iter().for_each(|m| r(&mut c, m));
                    &[]
                }
                MailboxChange::Copy { from, to, messages } => {
                    c.push(4);
                    s(&mut c, from);
                    s(&mut c, to);
                    c.extend_from_slice(&(messages.len() as u64).to_be_bytes());
                    messages.iter().for_each(|m| r(&mut c, m));
                    &[]
                }
                MailboxChange::Create { mailbox } => {
                    c.push(5);
                    s(&mut c, mailbox);
                    &[]
                }
                MailboxChange::Delete { mailbox } => {
                    c.push(6);
                    s(&mut c, mailbox);
                    &[]
                }
                MailboxChange::Rename { from, to } => {
                    c.push(7);
                    s(&mut c, from);
                    s(&mut c, to);
                    &[]
                }
            }
        }
    };
    c.extend_from_slice(&(body.len() as u64).to_be_bytes());
    c.extend_from_slice(&Sha256::digest(body));
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&c);
    h.finalize().into()
}

#[tokio::test]
async fn append_get_roundtrip_and_documented_chain() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    assert_eq!(j.head(), 0);
    assert!(j.get(1).unwrap().is_none());

    let big = b"Received: from somewhere\r\n".repeat(500);
    let recs = [
        simple(1),
        audit("exported 1"),
        message("a@x.org", &["b@y.org"], None, &big, T0),
        message("", &["postmaster@y.org"], None, b"", T0),
    ];
    let mut prev = [0u8; 32];
    for (i, rec) in recs.iter().enumerate() {
        let a = j.append(rec.clone()).await.unwrap();
        assert_eq!(a.seq, i as u64 + 1);
        assert_eq!(
            a.body_sha256,
            <[u8; 32]>::from(Sha256::digest(rec.kind.body()))
        );
        let got = j.get(a.seq).unwrap().unwrap();
        assert_eq!(got.kind, rec.kind);
        assert_eq!(got.time_ms, rec.time_ms);
        assert_eq!(got.prev_chain, prev);
        assert_eq!(got.chain, a.chain);
        assert_eq!(documented_chain(&prev, &got), got.chain);
        prev = got.chain;
    }
    assert_eq!(j.head(), 4);
    assert_eq!(*j.watch_head().borrow(), 4);
    let report = j.verify().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records_checked, 4);
    assert_eq!(
        report.body_bytes,
        (recs[0].kind.body().len() + big.len()) as u64
    );
    assert!(report.bytes > 0 && report.bytes < report.body_bytes);
}

fn mailbox(user: &str, change: MailboxChange) -> NewRecord {
    NewRecord {
        time_ms: T0,
        kind: RecordKind::Mailbox(MailboxRecord {
            user: user.into(),
            change,
        }),
    }
}

#[tokio::test]
async fn mailbox_changes_roundtrip_chain_and_wait_for_the_applier() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let known = MessageRef {
        uid: 7,
        trace: Some("L12.0011223344556677".into()),
        message_id: Some("<a@x>".into()),
        size: 1234,
    };
    let bare = MessageRef {
        uid: 9,
        message_id: Some("<b@x>".into()),
        size: 99,
        ..Default::default()
    };
    let recs = [
        mailbox(
            "alice",
            MailboxChange::Append {
                mailbox: "Sent".into(),
                flags: vec!["\\Seen".into()],
                internal_date: Some("22-Nov-2026 10:00:00 +0000".into()),
                body: b"Subject: sent\r\n\r\nhello\r\n".repeat(100),
            },
        ),
        mailbox(
            "alice",
            MailboxChange::Flags {
                mailbox: "INBOX".into(),
                messages: vec![
                    (known.clone(), vec!["\\Flagged".into()]),
                    (bare.clone(), vec![]),
                ],
            },
        ),
        mailbox(
            "alice",
            MailboxChange::Expunge {
                mailbox: "INBOX".into(),
                messages: vec![bare.clone()],
            },
        ),
        mailbox(
            "bob",
            MailboxChange::Copy {
                from: "INBOX".into(),
                to: "Archive".into(),
                messages: vec![known],
            },
        ),
        mailbox(
            "bob",
            MailboxChange::Create {
                mailbox: "A".into(),
            },
        ),
        mailbox(
            "bob",
            MailboxChange::Rename {
                from: "A".into(),
                to: "B".into(),
            },
        ),
        mailbox(
            "bob",
            MailboxChange::Delete {
                mailbox: "B".into(),
            },
        ),
    ];
    let mut prev = [0u8; 32];
    for rec in &recs {
        let a = j.append(rec.clone()).await.unwrap();
        let got = j.get(a.seq).unwrap().unwrap();
        assert_eq!(got.kind, rec.kind);
        assert_eq!(documented_chain(&prev, &got), got.chain);
        prev = got.chain;
    }
    // Every change waits for the replica's applier like a message does.
    let waiting: Vec<u64> = j
        .undelivered(100)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(waiting, (1..=7).collect::<Vec<u64>>());
    let report = j.verify().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.body_bytes, recs[0].kind.body().len() as u64);
}

#[tokio::test]
async fn read_from_pages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=25 {
        j.append(simple(n)).await.unwrap();
    }
    let mut next = 0; // 0 is treated as "from the start"
    let mut seen = Vec::new();
    loop {
        let page = j.read_from(next, 10).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        next = page.last().unwrap().seq + 1;
        seen.extend(page.into_iter().map(|r| r.seq));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert_eq!(j.read_from(20, 100).unwrap().len(), 6);
    assert!(j.read_from(26, 10).unwrap().is_empty());
    assert!(j.read_from(1, 0).unwrap().is_empty());
}

#[tokio::test]
async fn index_lookups_are_case_insensitive_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let day = 86_400_000;
    j.append(message(
        "Alice@Example.org",
        &["Bob@Example.net", "carol@example.net"],
        Some("<one@x>"),
        b"1",
        T0,
    ))
    .await
    .unwrap();
    j.append(message(
        "alice@example.org.evil",
        &["bob@example.net"],
        Some("one@x.more"),
        b"2",
        T0 + day,
    ))
    .await
    .unwrap();
    j.append(message(
        "bob@example.net",
        &["ALICE@example.org"],
        Some("two@x"),
        b"3",
        T0 + day,
    ))
    .await
    .unwrap();
    j.append(audit("not a message")).await.unwrap();

    assert_eq!(j.by_sender("alice@EXAMPLE.org").unwrap(), vec![1]);
    assert_eq!(j.by_sender("<bob@example.net>").unwrap(), vec![3]);
    assert_eq!(j.by_recipient("BOB@example.net").unwrap(), vec![1, 2]);
    assert_eq!(j.by_recipient("alice@example.org").unwrap(), vec![3]);
    assert_eq!(j.by_message_id("one@x").unwrap(), vec![1]);
    assert_eq!(j.by_message_id("<one@x>").unwrap(), vec![1]);
    assert_eq!(j.by_message_id("two@x").unwrap(), vec![3]);
    assert!(j.by_message_id("nope").unwrap().is_empty());
    let d0 = time::macros::date!(2024 - 03 - 01);
    let d1 = time::macros::date!(2024 - 03 - 02);
    assert_eq!(j.by_day(d0).unwrap(), vec![1, 4]);
    assert_eq!(j.by_day(d1).unwrap(), vec![2, 3]);
    assert!(
        j.by_day(time::macros::date!(2024 - 03 - 03))
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn delivery_state_transitions_and_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=3 {
        j.append(simple(n)).await.unwrap();
    }
    let a = j.append(audit("x")).await.unwrap();
    assert_eq!(j.state(a.seq).unwrap(), None);
    assert!(matches!(
        j.set_state(a.seq, &DeliveryState::pending(0)),
        Err(JournalError::NotFound(4))
    ));
    assert!(matches!(
        j.set_state(99, &DeliveryState::pending(0)),
        Err(JournalError::NotFound(99))
    ));

    let s1 = j.state(1).unwrap().unwrap();
    assert_eq!(s1.status, DeliveryStatus::Pending);
    assert_eq!(s1.attempts, 0);
    let open_seqs = |j: &levee_journal::Journal| {
        j.undelivered(100)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
    };
    assert_eq!(open_seqs(&j), vec![1, 2, 3]);

    let deferred = DeliveryState {
        status: DeliveryStatus::Deferred,
        attempts: 1,
        next_attempt_ms: T0 + 60_000,
        last_reply: Some("451 try later".into()),
        updated_ms: T0 + 1,
    };
    j.set_state(2, &deferred).unwrap();
    assert_eq!(j.state(2).unwrap().unwrap(), deferred);
    assert_eq!(open_seqs(&j), vec![1, 2, 3]);

    let delivered = DeliveryState {
        status: DeliveryStatus::Delivered,
        attempts: 1,
        ..deferred.clone()
    };
    j.set_state(1, &delivered).unwrap();
    j.set_state(
        3,
        &DeliveryState {
            status: DeliveryStatus::Failed,
            ..deferred.clone()
        },
    )
    .unwrap();
    assert_eq!(open_seqs(&j), vec![2]);
    assert_eq!(j.undelivered(100).unwrap()[0].1, deferred);

    // Back to an open state puts it on the work list again.
    j.set_state(3, &deferred).unwrap();
    assert_eq!(open_seqs(&j), vec![2, 3]);
    assert_eq!(j.undelivered(1).unwrap().len(), 1);
    j.flush().await.unwrap();

    drop(j);
    let j = open(dir.path());
    assert_eq!(j.state(1).unwrap().unwrap(), delivered);
    assert_eq!(open_seqs(&j), vec![2, 3]);
}

#[tokio::test]
async fn reopen_keeps_head_and_chain_and_continues_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let j = open(dir.path());
        let mut last = None;
        for n in 1..=5 {
            last = Some(j.append(simple(n)).await.unwrap());
        }
        last.unwrap()
    };
    let j = open(dir.path());
    assert_eq!(j.head(), 5);
    let a = j.append(simple(6)).await.unwrap();
    assert_eq!(a.seq, 6);
    assert_eq!(j.get(6).unwrap().unwrap().prev_chain, last.chain);
    assert_eq!(
        j.by_sender("sender@example.org").unwrap(),
        (1..=6).collect::<Vec<_>>()
    );
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test]
async fn reopen_heals_missing_index_and_state_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        for n in 1..=4 {
            j.append(simple(n)).await.unwrap();
        }
        // Simulate a crash after the record insert of seq 3 and 4 but before
        // their derived writes.
        for name in [
            "idx_sender",
            "idx_recipient",
            "idx_message_id",
            "idx_day",
            "state",
            "undelivered",
        ] {
            let t = j.raw_tree_for_tests(name).unwrap();
            let doomed: Vec<_> = t
                .iter()
                .keys()
                .map(Result::unwrap)
                .filter(|k| k.ends_with(&3u64.to_be_bytes()) || k.ends_with(&4u64.to_be_bytes()))
                .collect();
            assert!(!doomed.is_empty(), "{name}");
            for k in doomed {
                t.remove(k).unwrap();
            }
        }
        j.raw_tree_for_tests("meta")
            .unwrap()
            .insert("indexed_through", &2u64.to_be_bytes())
            .unwrap();
        j.flush().await.unwrap();
    }
    let j = open(dir.path());
    assert_eq!(j.by_sender("sender@example.org").unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(j.by_message_id("m4@example.org").unwrap(), vec![4]);
    assert_eq!(j.state(3).unwrap().unwrap().status, DeliveryStatus::Pending);
    assert_eq!(j.undelivered(10).unwrap().len(), 4);
}

#[tokio::test]
async fn large_bodies_land_in_sled_blob_files_and_survive_reopen() {
    // This is why the group commit also fsyncs `dir/blobs/*`.
    let dir = tempfile::tempdir().unwrap();
    let noise: Vec<u8> = (0..400_000).map(|_| rand::random::<u8>()).collect();
    {
        let j = open(dir.path());
        j.append(message("a@x.org", &["b@y.org"], None, &noise, T0))
            .await
            .unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(
            blobs > 0,
            "sled stored a 400 KB value inline; blob sync assumptions changed"
        );
    }
    let j = open(dir.path());
    assert_eq!(j.get(1).unwrap().unwrap().kind.body(), noise.as_slice());
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test]
async fn changes_made_at_the_replica_chain_apart_and_wait_for_no_applier() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let change = MailboxRecord {
        user: "alice".into(),
        change: MailboxChange::Append {
            mailbox: "Sent".into(),
            flags: vec!["\\Seen".into()],
            internal_date: None,
            body: b"Subject: sent during the outage\r\n\r\nhi\r\n".to_vec(),
        },
    };
    let at_replica = NewRecord {
        time_ms: T0,
        kind: RecordKind::MailboxAtReplica(change.clone()),
    };
    let a = j.append(at_replica.clone()).await.unwrap();
    let got = j.get(a.seq).unwrap().unwrap();
    assert_eq!(got.kind, at_replica.kind);
    assert_eq!(got.kind.body(), at_replica.kind.body());
    assert_eq!(documented_chain(&[0u8; 32], &got), got.chain);
    // The same change as made at the primary hashes differently: one never passes for
    // the other.
    let mut twin = got.clone();
    twin.kind = RecordKind::Mailbox(change.clone());
    assert_ne!(documented_chain(&[0u8; 32], &twin), got.chain);
    let b = j
        .append(NewRecord {
            time_ms: T0,
            kind: RecordKind::Mailbox(change),
        })
        .await
        .unwrap();
    // Only the primary's change waits for the replica's applier.
    let waiting: Vec<u64> = (j.undelivered(10).unwrap().iter())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(waiting, vec![b.seq]);
    assert!(j.verify().unwrap().is_intact());
}
