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
