//! Encryption at rest: bodies cannot be read in the raw files, come back with the key,
//! and a missing or wrong key is refused at open.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{T0, message};
use levee_journal::{BodyKey, Journal, JournalError, JournalOptions, RecordKind};

const MARKER: &[u8] = b"MARKER-7f3a-classified-organ-offer";

fn with_key(key: Option<[u8; 32]>) -> JournalOptions {
    JournalOptions {
        body_key: key.map(|k| Arc::new(BodyKey::from_bytes(&k))),
        ..JournalOptions::default()
    }
}

/// Whether any file under `dir` contains `needle`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// A small body (stored uncompressed) and a large compressible one (zstd, sealed after),
/// both carrying the marker.
async fn fill(j: &Journal) -> Vec<Vec<u8>> {
    let small = [b"Subject: offer\r\n\r\n".as_slice(), MARKER, b"\r\n"].concat();
    let large = [small.clone(), b"filler line of text\r\n".repeat(4000)].concat();
    for body in [&small, &large] {
        j.append(message("a@x.org", &["b@y.org"], Some("id@x"), body, T0))
            .await
            .unwrap();
    }
    j.flush().await.unwrap();
    vec![small, large]
}

fn body(j: &Journal, seq: u64) -> Vec<u8> {
    match j.get(seq).unwrap().unwrap().kind {
        RecordKind::Message(m) => m.body,
        other => panic!("not a message: {other:?}"),
    }
}

#[tokio::test]
async fn sealed_bodies_are_unreadable_on_disk_and_need_their_key() {
    // The control: without a key the marker is plainly in the files.
    let plain = tempfile::tempdir().unwrap();
    let j = Journal::open(plain.path(), with_key(None)).unwrap();
    fill(&j).await;
    drop(j);
    assert!(
        files_contain(plain.path(), MARKER),
        "grep finds plain bodies"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = [42u8; 32];
    let j = Journal::open(dir.path(), with_key(Some(key))).unwrap();
    let bodies = fill(&j).await;
    assert_eq!(body(&j, 1), bodies[0]);
    assert_eq!(body(&j, 2), bodies[1]);
    assert!(j.verify().unwrap().is_intact());
    // The envelope stays searchable without opening bodies.
    assert_eq!(j.by_recipient("b@y.org").unwrap(), vec![1, 2]);
    drop(j);
    assert!(
        !files_contain(dir.path(), MARKER),
        "a body is readable at rest"
    );

    let refused = |opts| match Journal::open(dir.path(), opts) {
        Err(JournalError::Key(text)) => text,
        Err(other) => panic!("not a key error: {other}"),
        Ok(_) => panic!("opened without the right key"),
    };
    assert!(refused(with_key(None)).contains("encrypted"));
    assert!(refused(with_key(Some([43u8; 32]))).contains("wrong encryption key"));

    let j = Journal::open(dir.path(), with_key(Some(key))).unwrap();
    assert_eq!(body(&j, 2), bodies[1]);
}

#[tokio::test]
async fn a_key_added_later_seals_new_bodies_and_old_ones_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), with_key(None)).unwrap();
    let old = fill(&j).await;
    drop(j);
    let j = Journal::open(dir.path(), with_key(Some([5u8; 32]))).unwrap();
    let new = fill(&j).await;
    assert_eq!(body(&j, 1), old[0]);
    assert_eq!(body(&j, 4), new[1]);
    assert!(j.verify().unwrap().is_intact());

    // A replica without a key receives the records readable, and stores them its way.
    let other = tempfile::tempdir().unwrap();
    let replica = Journal::open(other.path(), with_key(None)).unwrap();
    replica
        .append_replicated(j.read_from(1, 10).unwrap())
        .await
        .unwrap();
    assert_eq!(body(&replica, 4), new[1]);
    assert_eq!(replica.tip(), j.tip());
}
