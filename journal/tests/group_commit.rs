//! Concurrent appends share flushes and still come out gap-free.

mod common;

use std::collections::BTreeSet;

use common::{open, simple};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let before = j.flush_count();
    // Hold every appender at a barrier so they really are concurrent.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for n in 1..=64u64 {
        let j = j.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let rec = simple(n);
            let a = j.append(rec.clone()).await.unwrap();
            // Acknowledged means visible and durable right now.
            assert!(j.head() >= a.seq);
            assert_eq!(j.get(a.seq).unwrap().unwrap().kind, rec.kind);
            a.seq
        }));
    }
    let mut seqs = BTreeSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap()));
    }
    let flushes = j.flush_count() - before;
    println!("64 concurrent appends used {flushes} flushes");
    assert_eq!(seqs, (1..=64).collect::<BTreeSet<_>>());
    assert_eq!(j.head(), 64);
    assert!(flushes >= 1);
    assert!(
        flushes < 64,
        "group commit did not group: {flushes} flushes"
    );
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_head_only_reports_durable_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let mut rx = j.watch_head();
    let appender = {
        let j = j.clone();
        tokio::spawn(async move {
            for n in 1..=20 {
                j.append(simple(n)).await.unwrap();
            }
        })
    };
    let mut last = 0;
    while last < 20 {
        rx.changed().await.unwrap();
        let head = *rx.borrow_and_update();
        assert!(head > last);
        // Everything up to a published head is readable, nothing past the
        // durable head is (appends continue meanwhile, hence the window).
        let visible = j.read_from(1, 100).unwrap().len() as u64;
        assert!(
            visible >= head && visible <= j.head(),
            "{visible} vs {head}"
        );
        assert!(j.get(head).unwrap().is_some());
        last = head;
    }
    appender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_appends_leave_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let mut acked = BTreeSet::new();
    for n in 1..=50u64 {
        let task = {
            let j = j.clone();
            tokio::spawn(async move { j.append(simple(n)).await })
        };
        if n % 3 == 0 {
            // Cancelled before, while or after its group commit: the record
            // may or may not be committed, but never half.
            task.abort();
            if let Ok(Ok(a)) = task.await {
                acked.insert(a.seq);
            }
        } else {
            acked.insert(task.await.unwrap().unwrap().seq);
        }
    }
    j.flush().await.unwrap();
    let head = j.head();
    assert!(acked.iter().all(|s| *s <= head));
    let seqs: Vec<u64> = j
        .read_from(1, 1000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    assert!(j.verify().unwrap().is_intact());
    drop(j);
    // The writer thread is joined on drop: reopening works at once.
    let j = open(dir.path());
    assert_eq!(j.head(), head);
}

#[tokio::test]
async fn small_cache_still_reads_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = levee_journal::JournalOptions {
        cache_bytes: 256 << 10,
        ..Default::default()
    };
    assert_eq!(
        levee_journal::JournalOptions::default().cache_bytes,
        64 << 20
    );
    let j = levee_journal::Journal::open(dir.path(), opts).unwrap();
    let body = b"Received: from somewhere far away\r\n".repeat(120);
    for n in 1..=300u64 {
        let rec = common::message("a@x.org", &["b@y.org"], None, &body, common::T0 + n);
        assert_eq!(j.append(rec).await.unwrap().seq, n);
    }
    assert_eq!(j.read_from(1, 1000).unwrap().len(), 300);
    assert_eq!(j.by_sender("a@x.org").unwrap().len(), 300);
    assert!(j.verify().unwrap().is_intact());
}
