//! A failed group commit must not leave a seq gap or a half-linked chain.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{open, simple};
use levee_journal::JournalError;

#[tokio::test]
async fn failed_flush_rolls_back_and_seq_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=3 {
        j.append(simple(n)).await.unwrap();
    }
    j.fail_next_syncs_for_tests(1);
    let err = j.append(simple(100)).await.unwrap_err();
    assert!(matches!(err, JournalError::Full), "{err}");
    assert_eq!(j.head(), 3);
    assert!(j.get(4).unwrap().is_none());
    assert!(j.by_message_id("m100@example.org").unwrap().is_empty());

    let a = j.append(simple(4)).await.unwrap();
    assert_eq!(a.seq, 4);
    assert_eq!(
        j.get(3).unwrap().unwrap().chain,
        j.get(4).unwrap().unwrap().prev_chain
    );
    assert_eq!(j.by_message_id("m4@example.org").unwrap(), vec![4]);
    assert!(j.verify().unwrap().is_intact());

    drop(j);
    let j = open(dir.path());
    assert_eq!(j.head(), 4);
    assert!(j.by_message_id("m100@example.org").unwrap().is_empty());
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_around_a_failed_flush_stay_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    j.append(simple(0)).await.unwrap();
    j.fail_next_syncs_for_tests(1);
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for n in 1..=32u64 {
        let (j, barrier) = (j.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let rec = simple(n);
            match j.append(rec.clone()).await {
                Ok(a) => {
                    // The acknowledged seq really holds this appender's record.
                    assert_eq!(j.get(a.seq).unwrap().unwrap().kind, rec.kind);
                    Some(a.seq)
                }
                Err(JournalError::Full) => None,
                Err(e) => panic!("unexpected error {e}"),
            }
        }));
    }
    let mut ok = BTreeSet::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(seq) => assert!(ok.insert(seq)),
            None => failed += 1,
        }
    }
    assert!(failed >= 1, "the injected failure hit nobody");
    let head = j.head();
    assert_eq!(ok, (2..=head).collect::<BTreeSet<_>>());
    assert!(j.verify().unwrap().is_intact());
    assert_eq!(j.append(simple(99)).await.unwrap().seq, head + 1);
}
