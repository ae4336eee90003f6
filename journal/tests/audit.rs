//! The audit index: audit records come back newest first, in pages, whatever else the
//! journal holds; a journal written before the index existed gets it filled in at open.

mod common;

use common::{audit, open, simple};
use levee_journal::{Record, RecordKind};

fn details(page: &[Record]) -> Vec<String> {
    page.iter()
        .map(|r| match &r.kind {
            RecordKind::Audit(a) => a.detail.clone(),
            other => panic!("not an audit record: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn audit_records_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=12 {
        j.append(simple(n)).await.unwrap();
        if n % 2 == 0 {
            j.append(audit(&format!("a{n}"))).await.unwrap();
        }
    }
    let head = j.head();
    let first = j.audit_before(u64::MAX, 4).unwrap();
    assert_eq!(details(&first), ["a12", "a10", "a8", "a6"]);
    let next = j.audit_before(first.last().unwrap().seq, 4).unwrap();
    assert_eq!(details(&next), ["a4", "a2"]);
    assert!(
        j.audit_before(next.last().unwrap().seq, 4)
            .unwrap()
            .is_empty()
    );
    assert!(j.audit_before(head + 100, 0).unwrap().is_empty());
    assert_eq!(details(&j.audit_before(first[0].seq, 1).unwrap()), ["a10"]);
}

#[tokio::test]
async fn an_older_journal_gets_its_audit_records_indexed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        j.append(audit("before")).await.unwrap();
        j.append(simple(1)).await.unwrap();
        j.append(audit("also before")).await.unwrap();
        // As a journal from before the audit index: no entries, no backfill mark.
        j.raw_tree_for_tests("idx_audit").unwrap().clear().unwrap();
        j.raw_tree_for_tests("meta")
            .unwrap()
            .remove("audit_index_backfilled")
            .unwrap();
        assert!(j.audit_before(u64::MAX, 10).unwrap().is_empty());
        j.flush().await.unwrap();
    }
    let j = open(dir.path());
    j.append(audit("after")).await.unwrap();
    let all = j.audit_before(u64::MAX, 10).unwrap();
    assert_eq!(details(&all), ["after", "also before", "before"]);
}
