//! levee killed between the primary MTA's 250 and the write of the record's state leaves
//! the record pending: the restarted delivery worker must not hand the primary a second
//! copy of what it has, and must still deliver what it lacks. Both cases, made exactly:
//! two messages delivered, both records set back to pending (what the kill leaves), one
//! copy removed from the mailbox; after the restart each is in the mailbox once.

use std::time::{Duration, Instant};

use levee_journal::{DeliveryState, DeliveryStatus, RecordKind};
use levee_tests::tally::{inbox_counts, maildir_file};
use levee_tests::{LeveeMode, Site, send_sample, tail};

const RCPT: &str = "alice@example.test";
const KEPT: &str = "kept-copy@example.org";
const LOST: &str = "lost-copy@example.org";
/// What the worker logs when the copy is there already.
const FOUND: &str = "the primary already has this record's copy";

#[test]
fn a_pending_record_whose_copy_is_there_is_not_delivered_twice() {
    let mut site = Site::start_with("redeliver", LeveeMode::Child, "");
    for id in [KEPT, LOST] {
        let verdict = send_sample(site.dir.path(), site.levee.ports.relay, id, RCPT);
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    site.wait_for_messages("alice", &[KEPT.into(), LOST.into()], 20);
    site.levee.stop();

    // What a kill between the MTA's 250 and the state write leaves: both pending.
    let journal = site.open_journal();
    let mut seqs = Vec::new();
    for record in journal.read_from(1, usize::MAX).unwrap() {
        if let RecordKind::Message(m) = &record.kind {
            let state = journal.state(record.seq).unwrap().unwrap();
            assert_eq!(
                state.status,
                DeliveryStatus::Delivered,
                "{:?}",
                m.message_id
            );
            journal
                .set_state(record.seq, &DeliveryState::pending(0))
                .unwrap();
            seqs.push((record.seq, m.message_id.clone().unwrap_or_default()));
        }
    }
    assert_eq!(seqs.len(), 2);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(journal.flush())
        .unwrap();
    drop(journal);
    let lost_file = maildir_file(&site.stack, "alice", LOST);
    std::fs::remove_file(&lost_file).unwrap();

    site.levee.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = inbox_counts(&site.stack, "alice");
        if counts.get(LOST) == Some(&1) && site.levee.log().contains(FOUND) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not settle both records: {counts:?}\n{}",
            tail(&site.levee.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the worker's next passes: nothing arrives twice.
    std::thread::sleep(Duration::from_secs(3));
    let counts = inbox_counts(&site.stack, "alice");
    assert_eq!(counts.get(KEPT), Some(&1), "{counts:?}");
    assert_eq!(counts.get(LOST), Some(&1), "{counts:?}");

    site.levee.stop();
    let journal = site.open_journal();
    for (seq, id) in seqs {
        let state = journal.state(seq).unwrap().unwrap();
        assert_eq!(state.status, DeliveryStatus::Delivered, "{id}: {state:?}");
        let note = state.last_reply.unwrap_or_default();
        assert_eq!(
            note.contains("earlier attempt's copy"),
            id == KEPT,
            "{id}: {note}"
        );
    }
}
