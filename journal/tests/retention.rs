//! Retention: held records survive pruning, unheld old ones go, the chain still
//! verifies (and still catches tampering) across what was pruned, and a replica that
//! receives the prune record removes the same records.

mod common;

use common::{T0, audit, open, simple};
use levee_journal::{DeliveryState, DeliveryStatus, Journal, JournalError, retention};

fn delivered(j: &Journal, seq: u64) {
    let state = DeliveryState {
        status: DeliveryStatus::Delivered,
        attempts: 1,
        next_attempt_ms: T0,
        last_reply: Some("250 ok".into()),
        updated_ms: T0,
    };
    j.set_state(seq, &state).unwrap();
}

/// Ten delivered messages (seqs 1..=10, times T0+1..T0+10) with an audit record at 6.
async fn ten_messages(j: &Journal) {
    for n in 1..=10 {
        if n == 6 {
            j.append(audit("exported something")).await.unwrap();
            continue;
        }
        let seq = j.append(simple(n)).await.unwrap().seq;
        delivered(j, seq);
    }
}

fn present(j: &Journal) -> Vec<u64> {
    (1..=j.head())
        .filter(|&s| j.get(s).unwrap().is_some())
        .collect()
}

#[tokio::test]
async fn held_records_survive_unheld_old_ones_go_and_verify_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    ten_messages(&j).await;
    let hold = j
        .hold(
            T0,
            "officer".into(),
            "matter 42",
            "--rcpt x".into(),
            &[3, 4],
        )
        .await
        .unwrap();
    assert_eq!(hold, 11);
    assert!(j.is_held(3).unwrap() && j.is_held(4).unwrap() && !j.is_held(5).unwrap());

    // Seq 10 is not yet due (accepted at T0+10, the cut-off is T0+10).
    let report = j
        .prune(T0, "retention".into(), T0 + 10, (1, 10))
        .await
        .unwrap();
    assert_eq!(
        (report.pruned, report.held, report.record),
        (6, 2, Some(12))
    );
    assert_eq!(present(&j), vec![3, 4, 6, 10, 11, 12]);
    assert!(j.by_message_id("m1@example.org").unwrap().is_empty());
    assert_eq!(j.by_message_id("m3@example.org").unwrap(), vec![3]);

    let v = j.verify().unwrap();
    assert!(v.is_intact(), "{v:?}");
    assert_eq!((v.records_checked, v.records_pruned), (6, 6));

    // A second prune finds nothing more and writes no record.
    let again = j
        .prune(T0, "retention".into(), T0 + 10, (1, 12))
        .await
        .unwrap();
    assert_eq!((again.pruned, again.record), (0, None));

    // Released, the held records go too; the chain still verifies, across both prunes.
    j.release(T0, "officer".into(), hold, "matter closed")
        .await
        .unwrap();
    let holds = j.holds().unwrap();
    assert_eq!(holds.len(), 1);
    assert!(holds[0].released && holds[0].reason == "matter 42" && holds[0].count == 2);
    let report = j
        .prune(T0, "retention".into(), T0 + 10, (1, 13))
        .await
        .unwrap();
    assert_eq!(report.pruned, 2);
    assert_eq!(present(&j), vec![6, 10, 11, 12, 13, 14]);
    let v = j.verify().unwrap();
    assert!(v.is_intact(), "{v:?}");
    assert_eq!(v.records_pruned, 8);

    // Holds and pruned ranges survive a reopen (they are derived from the chain).
    drop(j);
    let j = open(dir.path());
    assert!(j.verify().unwrap().is_intact());
    assert_eq!(present(&j), vec![6, 10, 11, 12, 13, 14]);
}

#[tokio::test]
async fn undelivered_messages_audit_records_and_recent_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=4 {
        j.append(simple(n)).await.unwrap();
    }
    delivered(&j, 1);
    delivered(&j, 3);
    let report = j.prune(T0, "r".into(), T0 + 100, (1, 4)).await.unwrap();
    assert_eq!(report.pruned, 2);
    assert_eq!(present(&j), vec![2, 4, 5]);
    // The bound (what the replica already has) holds too.
    delivered(&j, 2);
    delivered(&j, 4);
    let report = j.prune(T0, "r".into(), T0 + 100, (1, 3)).await.unwrap();
    assert_eq!(report.pruned, 1);
    assert_eq!(present(&j), vec![4, 5, 6]);
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test]
async fn a_gap_without_a_prune_record_and_a_forged_checkpoint_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    ten_messages(&j).await;
    j.prune(T0, "r".into(), T0 + 3, (1, 10)).await.unwrap(); // prunes 1..=2, record 11
    assert!(j.verify().unwrap().is_intact());
    let records = j.raw_tree_for_tests("records").unwrap();

    // Records deleted by hand: a gap nothing accounts for.
    let v4 = records.remove(4u64.to_be_bytes()).unwrap().unwrap();
    let report = j.verify().unwrap();
    assert_eq!(
        report.first_broken.as_ref().map(|b| b.0),
        Some(4),
        "{report:?}"
    );
    records.insert(4u64.to_be_bytes(), v4).unwrap();

    // A checkpoint forged into the derived tree, with the right hashes even, but no
    // prune record in the chain lists it.
    let before = j.get(7).unwrap().unwrap().prev_chain;
    let after = j.get(8).unwrap().unwrap().chain;
    let mut forged = 7u64.to_be_bytes().to_vec();
    forged.extend(8u64.to_be_bytes());
    forged.extend(before);
    forged.extend(after);
    j.raw_tree_for_tests("idx_pruned")
        .unwrap()
        .insert(forged, &[])
        .unwrap();
    records.remove(7u64.to_be_bytes()).unwrap();
    records.remove(8u64.to_be_bytes()).unwrap();
    let report = j.verify().unwrap();
    let (seq, reason) = report.first_broken.expect("a forged prune goes unnoticed");
    assert_eq!(seq, 7);
    assert!(reason.contains("no prune record"), "{reason}");
}

#[tokio::test]
async fn pruning_stops_at_an_altered_record() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    ten_messages(&j).await;
    let records = j.raw_tree_for_tests("records").unwrap();
    let mut v3 = records.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
    let at = v3.len() - 70; // inside the body_sha256
    v3[at] ^= 1;
    records.insert(3u64.to_be_bytes(), v3).unwrap();
    let err = j
        .prune(T0, "r".into(), T0 + 100, (1, 10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JournalError::Retention(text) if text.contains("record 3")),
        "{err}"
    );
    assert_eq!(records.len(), 10, "nothing pruned");
}

#[tokio::test]
async fn a_replica_prunes_what_the_primary_pruned() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = open(a.path());
    let replica = open(b.path());
    ten_messages(&primary).await;
    primary
        .hold(T0, "o".into(), "case 7", "seq 2".into(), &[2])
        .await
        .unwrap();
    replica
        .append_replicated(primary.read_from(1, 100).unwrap())
        .await
        .unwrap();
    assert!(replica.is_held(2).unwrap());
    primary
        .prune(T0, "r".into(), T0 + 5, (1, 11))
        .await
        .unwrap();
    replica
        .append_replicated(primary.read_from(12, 100).unwrap())
        .await
        .unwrap();
    assert_eq!(present(&replica), present(&primary));
    assert_eq!(present(&replica), vec![2, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(replica.tip(), primary.tip());
    assert!(replica.verify().unwrap().is_intact());
}

#[tokio::test]
async fn holds_and_releases_refuse_what_makes_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    ten_messages(&j).await;
    let err = |r: Result<u64, JournalError>| r.unwrap_err().to_string();
    assert!(err(j.hold(T0, "o".into(), " ", "s".into(), &[1]).await).contains("reason"));
    assert!(err(j.hold(T0, "o".into(), "r", "s".into(), &[]).await).contains("no record"));
    assert!(err(j.hold(T0, "o".into(), "r", "s".into(), &[2, 1]).await).contains("ascend"));
    assert!(err(j.hold(T0, "o".into(), "r", "s".into(), &[99]).await).contains("99"));
    let text = j
        .release(T0, "o".into(), 3, "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("no hold 3"), "{text}");
    let hold = j.hold(T0, "o".into(), "r", "s".into(), &[1]).await.unwrap();
    j.release(T0, "o".into(), hold, "done").await.unwrap();
    let text = j
        .release(T0, "o".into(), hold, "again")
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("already released"), "{text}");
    // Each was an audit record, in the chain.
    let actions: Vec<String> = j
        .audit_before(u64::MAX, 10)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.kind {
            levee_journal::RecordKind::Audit(a) => Some(a.action),
            _ => None,
        })
        .collect();
    assert_eq!(actions[..2], [retention::RELEASE, retention::HOLD]);
}

#[tokio::test]
async fn a_hold_placed_after_a_prune_holds_only_what_is_still_stored() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    ten_messages(&j).await;
    // Selected 1..=4, then 1 and 2 were pruned before the hold was placed.
    let report = j
        .prune(T0, "retention".into(), T0 + 3, (1, 2))
        .await
        .unwrap();
    assert_eq!(report.pruned, 2);
    let hold = j
        .hold(
            T0,
            "officer".into(),
            "matter 7",
            "--since x".into(),
            &[1, 2, 3, 4],
        )
        .await
        .unwrap();
    let placed = j.holds().unwrap();
    assert_eq!(placed.len(), 1);
    assert_eq!((placed[0].id, placed[0].count), (hold, 2));
    assert!(j.is_held(3).unwrap() && j.is_held(4).unwrap() && !j.is_held(1).unwrap());
    let all_gone = j
        .hold(
            T0,
            "officer".into(),
            "matter 8",
            "--since x".into(),
            &[1, 2],
        )
        .await
        .unwrap_err();
    assert!(all_gone.to_string().contains("pruned"), "{all_gone}");
    assert!(j.verify().unwrap().is_intact());
}
