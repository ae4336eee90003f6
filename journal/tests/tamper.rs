//! `verify` must name the record that was altered, however it was altered.

mod common;

use common::{T0, message, open, simple};

#[tokio::test]
async fn every_single_byte_flip_is_detected_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let compressible = b"X-Header: value value value\r\n".repeat(100);
    for n in 1..=5 {
        let rec = if n == 3 {
            message("a@x.org", &["b@y.org"], Some("c@z"), &compressible, T0)
        } else {
            simple(n)
        };
        j.append(rec).await.unwrap();
    }
    assert!(j.verify().unwrap().is_intact());
    let records = j.raw_tree_for_tests("records").unwrap();

    for target in [2u64, 3] {
        let key = target.to_be_bytes();
        let original = records.get(key).unwrap().unwrap().to_vec();
        for pos in 0..original.len() {
            let mut bad = original.clone();
            bad[pos] ^= 0x01;
            records.insert(key, bad).unwrap();
            let report = j.verify().unwrap();
            let (seq, reason) = report
                .first_broken
                .unwrap_or_else(|| panic!("flip at byte {pos} of seq {target} went unnoticed"));
            assert_eq!(seq, target, "byte {pos}: {reason}");
            assert_eq!(report.records_checked, target - 1);
        }
        records.insert(key, original).unwrap();
    }
    assert!(j.verify().unwrap().is_intact());
}

#[tokio::test]
async fn swapped_and_removed_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=6 {
        j.append(simple(n)).await.unwrap();
    }
    let records = j.raw_tree_for_tests("records").unwrap();
    let v2 = records.get(2u64.to_be_bytes()).unwrap().unwrap();
    let v4 = records.get(4u64.to_be_bytes()).unwrap().unwrap();
    records.insert(2u64.to_be_bytes(), v4.clone()).unwrap();
    records.insert(4u64.to_be_bytes(), v2.clone()).unwrap();
    let report = j.verify().unwrap();
    assert_eq!(
        report.first_broken.as_ref().map(|b| b.0),
        Some(2),
        "{report:?}"
    );
    // Reading a swapped record is an error, not silently wrong data.
    assert!(j.get(2).is_err());
    records.insert(2u64.to_be_bytes(), v2).unwrap();
    records.insert(4u64.to_be_bytes(), v4).unwrap();
    assert!(j.verify().unwrap().is_intact());

    let v5 = records.remove(5u64.to_be_bytes()).unwrap().unwrap();
    let report = j.verify().unwrap();
    assert_eq!(
        report.first_broken.as_ref().map(|b| b.0),
        Some(5),
        "{report:?}"
    );
    records.insert(5u64.to_be_bytes(), v5).unwrap();

    // Removing the newest record leaves a chain that ends early.
    records.remove(6u64.to_be_bytes()).unwrap();
    let report = j.verify().unwrap();
    assert_eq!(
        report.first_broken.as_ref().map(|b| b.0),
        Some(6),
        "{report:?}"
    );
}

#[tokio::test]
async fn rewriting_a_record_consistently_still_breaks_the_next_link() {
    // An attacker who re-encodes seq 2 with new content and a recomputed
    // chain hash cannot avoid breaking seq 3's prev_chain.
    let dir = tempfile::tempdir().unwrap();
    let forged_dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    for n in 1..=3 {
        j.append(simple(n)).await.unwrap();
    }
    let forged = open(forged_dir.path());
    forged.append(simple(1)).await.unwrap();
    let mut altered = simple(2);
    altered.time_ms += 1;
    forged.append(altered).await.unwrap();
    let forged_value = forged
        .raw_tree_for_tests("records")
        .unwrap()
        .get(2u64.to_be_bytes())
        .unwrap()
        .unwrap();
    j.raw_tree_for_tests("records")
        .unwrap()
        .insert(2u64.to_be_bytes(), forged_value)
        .unwrap();
    let report = j.verify().unwrap();
    assert_eq!(
        report.first_broken.as_ref().map(|b| b.0),
        Some(3),
        "{report:?}"
    );
    assert_eq!(report.records_checked, 2);
}
