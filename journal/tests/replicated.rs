//! Replication into a second journal: `append_replicated`, `last_chain`,
//! `check_chain` and the caller's named meta values.

mod common;

use std::path::Path;

use common::{T0, audit, message, open, simple};
use levee_journal::{Journal, JournalError, JournalOptions, Record, RecordKind, check_chain};
use rand::{RngCore, SeedableRng};

/// Trees whose whole content must be identical in a journal and its copy.
const DERIVED: [&str; 6] = [
    "idx_message_id",
    "idx_sender",
    "idx_recipient",
    "idx_day",
    "state",
    "undelivered",
];

/// A replica that never compresses, so its stored bytes differ from the
/// primary's while the chain must not.
fn open_replica(dir: &Path) -> Journal {
    let opts = JournalOptions {
        compress_min_bytes: usize::MAX,
        ..JournalOptions::default()
    };
    Journal::open(dir, opts).unwrap()
}

/// `n` mixed records: messages, audits, bodies over 128 KiB (compressible
/// and not), an empty body and one without Message-ID.
async fn fill(j: &Journal, n: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 1..=n {
        let rec = match i % 7 {
            0 => audit(&format!("export {i}")),
            3 => {
                let mut noise = vec![0u8; 200 * 1024];
                rng.fill_bytes(&mut noise);
                message("Big@Example.org", &["a@x.net"], None, &noise, T0 + i)
            }
            5 => {
                let body = format!("Received: hop {i}\r\n").repeat(20_000);
                let to = ["A@x.net", "b@y.net", "a@x.net"];
                message("big@example.org", &to, Some("<big@x>"), body.as_bytes(), T0)
            }
            6 => message("", &["postmaster@x.net"], None, b"", T0 + 86_400_000),
            _ => simple(i),
        };
        j.append(rec).await.unwrap();
    }
}

/// Streams `from` into `to` from `to.head() + 1` through `through`, in
/// batches cycling through `sizes`.
async fn copy(from: &Journal, to: &Journal, through: u64, sizes: &[usize]) {
    let mut sizes = sizes.iter().cycle();
    while to.head() < through {
        let max = (*sizes.next().unwrap()).min((through - to.head()) as usize);
        let batch = from.read_from(to.head() + 1, max).unwrap();
        let last = batch.last().unwrap().seq;
        assert_eq!(to.append_replicated(batch).await.unwrap(), last);
        assert_eq!(to.head(), last);
        assert_eq!(to.last_chain(), from.get(last).unwrap().unwrap().chain);
    }
}

fn all(j: &Journal) -> Vec<Record> {
    j.read_from(1, usize::MAX).unwrap()
}

/// A sled tree's content, key and value pairs in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn dump(j: &Journal, tree: &str) -> Entries {
    let t = j.raw_tree_for_tests(tree).unwrap();
    t.iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn assert_same(a: &Journal, b: &Journal) {
    assert_eq!(b.head(), a.head());
    assert_eq!(b.last_chain(), a.last_chain());
    assert_eq!(b.tip(), a.tip());
    assert_eq!(all(b), all(a));
    for tree in DERIVED {
        assert_eq!(dump(b, tree), dump(a, tree), "tree {tree}");
    }
    let report = b.verify().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records_checked, a.head());
}

#[tokio::test]
async fn copies_a_journal_batch_by_batch() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open_replica(db.path()));
    assert_eq!(b.append_replicated(Vec::new()).await.unwrap(), 0);
    assert_eq!(b.last_chain(), [0; 32]);
    fill(&a, 40).await;
    copy(&a, &b, a.head(), &[1, 3, 7, 2, 13]).await;
    assert_same(&a, &b);

    // Stored differently (B never compresses), same chain.
    assert_ne!(dump(&a, "records"), dump(&b, "records"));
    let messages: Vec<u64> = all(&a)
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Message(_)))
        .map(|r| r.seq)
        .collect();
    let undelivered: Vec<u64> = b
        .undelivered(usize::MAX)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(undelivered, messages);
    assert_eq!(
        b.by_sender("BIG@example.org").unwrap(),
        a.by_sender("big@example.org").unwrap()
    );
    assert_eq!(b.by_message_id("m1@example.org").unwrap(), vec![1]);
    assert_eq!(b.append_replicated(Vec::new()).await.unwrap(), b.head());
}

#[tokio::test]
async fn resumes_after_reopen_and_takes_batches_bigger_than_a_group() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    fill(&a, 30).await;
    for i in 0..1100 {
        a.append(audit(&format!("bulk {i}"))).await.unwrap();
    }
    {
        let b = open_replica(db.path());
        copy(&a, &b, 17, &[5, 4]).await;
    }
    let b = open_replica(db.path());
    assert_eq!(b.head(), 17);
    assert_eq!(b.last_chain(), a.get(17).unwrap().unwrap().chain);
    copy(&a, &b, 30, &[2]).await;
    // One call of 1100 records: more than one group commit's worth of jobs.
    copy(&a, &b, a.head(), &[usize::MAX]).await;
    assert_same(&a, &b);
    drop(b);
    let b = open_replica(db.path());
    assert_same(&a, &b);
}

/// What a refused batch must leave exactly as it was.
fn snapshot(j: &Journal) -> (u64, [u8; 32], Vec<Entries>) {
    let trees = ["records", "meta"].into_iter().chain(DERIVED);
    (
        j.head(),
        j.last_chain(),
        trees.map(|t| dump(j, t)).collect(),
    )
}

#[tokio::test]
async fn bad_batches_are_refused_whole_and_name_the_first_bad_record() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open_replica(db.path()));
    fill(&a, 20).await;
    copy(&a, &b, 8, &[8]).await;
    let before = snapshot(&b);
    // Seqs 9..=13 are all messages: 10 and 12 with big bodies, 13 empty.
    let next = || a.read_from(9, 5).unwrap();
    assert!(matches!(next()[2].kind, RecordKind::Message(ref m) if !m.body.is_empty()));

    let mut cases: Vec<(&str, Vec<Record>, u64)> = vec![
        ("gap", a.read_from(10, 3).unwrap(), 10),
        ("duplicate", a.read_from(8, 3).unwrap(), 8),
        ("from the start", a.read_from(1, 3).unwrap(), 1),
    ];
    let mut c = next();
    c[0].prev_chain[0] ^= 1;
    cases.push(("wrong prev_chain", c, 9));
    let mut c = next();
    if let RecordKind::Message(m) = &mut c[2].kind {
        m.body[0] ^= 0x20;
    }
    cases.push(("flipped body byte", c, 11));
    let mut c = next();
    c[1].body_sha256[31] ^= 1;
    cases.push(("wrong body_sha256", c, 10));
    let mut c = next();
    c[3].chain[5] ^= 1;
    cases.push(("wrong chain", c, 12));
    let mut c = next();
    c[4].time_ms += 1;
    cases.push(("altered time", c, 13));
    let mut c = next();
    if let RecordKind::Message(m) = &mut c[1].kind {
        m.rcpt_to.push("eve@evil.example".into());
    }
    cases.push(("altered envelope", c, 10));
    let mut c = next();
    c.remove(2);
    cases.push(("skips a seq mid-batch", c, 12));
    let mut c = next();
    c.swap(3, 4);
    cases.push(("out of order", c, 13));
    let mut c = next();
    c[2].seq = 10;
    cases.push(("repeats a seq mid-batch", c, 10));

    for (name, batch, bad) in cases {
        match b.append_replicated(batch).await {
            Err(JournalError::Mismatch { seq, reason }) => {
                assert_eq!(seq, bad, "{name}: {reason}");
                let want = match name {
                    "wrong prev_chain" => "prev_chain",
                    "flipped body byte" | "wrong body_sha256" => "body_sha256",
                    "wrong chain" | "altered time" | "altered envelope" => "chain is not",
                    _ => "expected seq",
                };
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: expected Mismatch, got {other:?}"),
        }
        assert!(snapshot(&b) == before, "{name}: journal changed");
    }
    // Nothing was left half-sealed: the genuine batch still fits.
    copy(&a, &b, a.head(), &[5]).await;
    assert_same(&a, &b);
}

#[tokio::test]
async fn check_chain_accepts_the_journal_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    fill(&a, 14).await;
    let mut prev = [0u8; 32];
    for r in all(&a) {
        check_chain(&r, &prev).unwrap();
        prev = r.chain;
    }
    let r = a.get(4).unwrap().unwrap();
    assert!(check_chain(&r, &[0; 32]).is_err());
    let mut t = r.clone();
    t.seq += 1;
    assert!(check_chain(&t, &r.prev_chain).is_err());
    let mut t = r.clone();
    t.kind = audit("x").kind;
    assert!(check_chain(&t, &r.prev_chain).is_err());
}

#[tokio::test]
async fn a_failed_sync_refuses_the_batch_and_it_can_be_retried() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open_replica(db.path()));
    fill(&a, 12).await;
    copy(&a, &b, 4, &[4]).await;
    let before = snapshot(&b);
    b.fail_next_syncs_for_tests(1);
    let batch = a.read_from(5, 6).unwrap();
    assert!(matches!(
        b.append_replicated(batch.clone()).await,
        Err(JournalError::Full)
    ));
    assert!(snapshot(&b) == before);
    assert_eq!(b.append_replicated(batch).await.unwrap(), 10);
    copy(&a, &b, a.head(), &[3]).await;
    assert_same(&a, &b);
}

/// Local appends and a replicated batch racing for the same seqs: whichever
/// reaches the writer thread second moves (the append) or is refused (the
/// batch, with Mismatch); the journal stays gap-free and intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_local_appends_do_not_corrupt_the_journal() {
    let da = tempfile::tempdir().unwrap();
    let a = open(da.path());
    fill(&a, 30).await;
    for round in 0..6 {
        let db = tempfile::tempdir().unwrap();
        let b = open_replica(db.path());
        copy(&a, &b, 10, &[10]).await;
        let batch = a.read_from(11, 20).unwrap();
        // Odd rounds hold the local appends back a little, so both orders
        // usually occur (which one wins a round is up to the timing).
        let delay = std::time::Duration::from_micros(round % 2 * round * 300);
        let locals: Vec<_> = (0..4)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    b.append(simple(1000 + i)).await.unwrap().seq
                })
            })
            .collect();
        let replicated = b.append_replicated(batch).await;
        let mut local_seqs = Vec::new();
        for h in locals {
            local_seqs.push(h.await.unwrap());
        }
        local_seqs.sort();
        match replicated {
            Ok(last) => {
                assert_eq!(last, 30);
                for seq in 11..=30 {
                    assert_eq!(b.get(seq).unwrap(), a.get(seq).unwrap());
                }
                assert_eq!(local_seqs, vec![31, 32, 33, 34]);
            }
            Err(JournalError::Mismatch { seq, .. }) => {
                assert_eq!(seq, 11);
                assert_eq!(local_seqs, vec![11, 12, 13, 14]);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        let report = b.verify().unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.records_checked, b.head());
    }
}

#[tokio::test]
async fn named_meta_values_roundtrip_survive_reopen_and_stay_apart_from_internals() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        assert_eq!(j.get_meta("replication_epoch").unwrap(), None);
        j.set_meta("replication_epoch", &7u64.to_be_bytes())
            .unwrap();
        assert_eq!(
            j.get_meta("replication_epoch").unwrap().unwrap(),
            7u64.to_be_bytes()
        );
        // The internal watermark's name is just another user key.
        j.set_meta("indexed_through", b"not a seq").unwrap();
        j.append(simple(1)).await.unwrap();
        j.set_meta("replication_epoch", &8u64.to_be_bytes())
            .unwrap();
        j.flush().await.unwrap();
        let internal = j.raw_tree_for_tests("meta").unwrap();
        assert_eq!(
            internal.get("indexed_through").unwrap().unwrap().as_ref(),
            1u64.to_be_bytes()
        );
    }
    let j = open(dir.path());
    assert_eq!(j.head(), 1);
    assert_eq!(
        j.get_meta("replication_epoch").unwrap().unwrap(),
        8u64.to_be_bytes()
    );
    assert_eq!(
        j.get_meta("indexed_through").unwrap().unwrap(),
        b"not a seq"
    );
    j.append(simple(2)).await.unwrap();
    assert!(j.verify().unwrap().is_intact());
}
