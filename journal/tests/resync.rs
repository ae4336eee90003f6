//! The primary's work list: seqs come back oldest first, leave when done, survive a
//! restart, and only records the journal holds can be put on it.

mod common;

use common::{open, simple};
use levee_journal::JournalError;

#[tokio::test]
async fn the_work_list_keeps_order_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        for n in 1..=6 {
            j.append(simple(n)).await.unwrap();
        }
        for seq in [5, 2, 4] {
            j.resync_mark(seq).unwrap();
        }
        j.resync_mark(4).unwrap();
        assert_eq!(j.resync_pending(10).unwrap(), [2, 4, 5]);
        assert_eq!(j.resync_pending(2).unwrap(), [2, 4]);
        j.resync_done(2).unwrap();
        j.resync_done(3).unwrap();
        assert_eq!(j.resync_len(), 2);
        assert!(matches!(j.resync_mark(0), Err(JournalError::NotFound(0))));
        assert!(matches!(j.resync_mark(7), Err(JournalError::NotFound(7))));
        j.flush().await.unwrap();
    }
    let j = open(dir.path());
    assert_eq!(j.resync_pending(10).unwrap(), [4, 5]);
    j.resync_done(4).unwrap();
    j.resync_done(5).unwrap();
    assert!(j.resync_pending(10).unwrap().is_empty());
    assert_eq!(j.resync_len(), 0);
}

#[tokio::test]
async fn unconfirmed_copies_keep_their_time_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        for n in 1..=3 {
            j.append(simple(n)).await.unwrap();
        }
        j.unconfirmed_mark(2, 1_700_000_000_123).unwrap();
        j.unconfirmed_mark(3, 42).unwrap();
        j.unconfirmed_mark(3, 43).unwrap();
        assert_eq!(j.unconfirmed_since(1).unwrap(), None);
        assert_eq!(j.unconfirmed_since(3).unwrap(), Some(43));
        assert_eq!(j.unconfirmed_len(), 2);
        assert!(matches!(
            j.unconfirmed_mark(4, 1),
            Err(JournalError::NotFound(4))
        ));
        j.flush().await.unwrap();
    }
    let j = open(dir.path());
    assert_eq!(j.unconfirmed_since(2).unwrap(), Some(1_700_000_000_123));
    j.unconfirmed_done(2).unwrap();
    j.unconfirmed_done(1).unwrap();
    assert_eq!(j.unconfirmed_since(2).unwrap(), None);
    assert_eq!(j.unconfirmed_len(), 1);
}
