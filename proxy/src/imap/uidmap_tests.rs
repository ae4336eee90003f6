use super::*;
use crate::imap::test_support::{catalogue, known};

fn appended(uid: u32, id: &str, size: u64) -> Known {
    Known {
        uid,
        identity: Identity {
            trace: None,
            message_id: Some(id.into()),
            size,
        },
        flags: Vec::new(),
    }
}

fn set(text: &str) -> SequenceSet {
    SequenceSet::try_from(text).unwrap()
}

fn show(set: &SequenceSet) -> String {
    use imap_codec::encode::Encoder;
    let line = imap_codec::CommandCodec::default()
        .encode(
            &imap_codec::imap_types::command::Command::new(
                "a",
                imap_codec::imap_types::command::CommandBody::fetch(
                    set.clone(),
                    imap_codec::imap_types::fetch::MacroOrMessageDataItemNames::Macro(
                        imap_codec::imap_types::fetch::Macro::Fast,
                    ),
                    true,
                )
                .unwrap(),
            )
            .unwrap(),
        )
        .dump();
    let line = String::from_utf8(line).unwrap();
    line["a UID FETCH ".len()..line.len() - " FAST\r\n".len()].to_string()
}

#[test]
fn same_messages_keep_their_uids_and_new_ones_continue_above_uidnext() {
    // The primary had 3 messages (UIDs 10, 11, 15; UIDNEXT 16); the replica got them as
    // 1, 2, 3, then a message that arrived after the failover (4).
    let primary = catalogue(vec![known(10, "1"), known(11, "2"), known(15, "3")], 16);
    let replica = [known(1, "1"), known(2, "2"), known(3, "3"), known(4, "4")];
    let t = Translation::build(&primary, &replica, 2222).unwrap();
    assert_eq!(t.kept, 3);
    assert!(t.missing.is_empty());
    let presented: Vec<_> = (1..=4).map(|r| t.presented(r)).collect();
    assert_eq!(presented, vec![Some(10), Some(11), Some(15), Some(16)]);
    assert_eq!(t.presented_uidnext(5), 17);
    assert_eq!(show(&t.to_replica(&set("11"))), "2");
    assert_eq!(show(&t.to_replica(&set("1:*"))), "1:*");
    assert_eq!(show(&t.to_replica(&set("12:15"))), "3");
    assert_eq!(show(&t.to_replica(&set("16:*"))), "4:*");
    assert_eq!(show(&t.to_replica(&set("10,15,16"))), "1,3:4");
    // A UID that names no message still names none.
    assert_eq!(show(&t.to_replica(&set("12"))), "4294967294");
    assert_eq!(show(&t.to_presented(&set("2:4"))), "11,15:16");
    assert_eq!(show(&t.to_presented(&set("3"))), "15");
}

#[test]
fn messages_out_of_order_at_the_replica_keep_their_uids() {
    // The replica applied 2 before 1: both keep their UIDs; the sequence numbers differ
    // (the session maps them), and sets map message by message.
    let primary = catalogue(vec![known(3, "1"), known(4, "2"), known(9, "3")], 10);
    let replica = [known(1, "2"), known(2, "1"), known(3, "3"), known(4, "4")];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!(t.kept, 3);
    assert!(t.missing.is_empty());
    assert!(!t.ordered);
    let presented: Vec<_> = (1..=5).map(|r| t.presented(r).unwrap()).collect();
    assert_eq!(presented, vec![4, 3, 9, 10, 11]);
    assert_eq!(show(&t.to_replica(&set("3:4"))), "1:2");
    assert_eq!(show(&t.to_replica(&set("3"))), "2");
    assert_eq!(show(&t.to_replica(&set("4:10"))), "1,3:4");
    // 5:* and 3:4, written as one range.
    assert_eq!(show(&t.to_replica(&set("9:*"))), "3:*");
    assert_eq!(show(&t.to_presented(&set("1"))), "4");
    assert_eq!(show(&t.to_presented(&set("1:3"))), "3:4,9");
    // 11:*, 3 and 9:10, written as few ranges.
    assert_eq!(show(&t.to_presented(&set("2:*"))), "3,9:*");
    assert_eq!(t.presented_uidnext(5), 11);
}

#[test]
fn messages_the_primary_never_had_get_uids_above_what_the_client_saw() {
    // An extra message between two the client knows: never a UID below UIDNEXT the client
    // saw (a client looks for new mail at UIDNEXT and above), so it comes after them.
    let primary = catalogue(vec![known(1, "1"), known(3, "3")], 4);
    let replica = [known(1, "1"), known(2, "x"), known(3, "3")];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!(
        (t.presented(1), t.presented(2), t.presented(3)),
        (Some(1), Some(4), Some(3))
    );
    assert!(!t.ordered);
    assert_eq!(t.presented(4), Some(5));
    let primary = catalogue(vec![known(1, "1"), known(2, "2")], 3);
    let replica = [known(1, "1"), known(2, "x"), known(3, "2")];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!(
        (t.presented(1), t.presented(2), t.presented(3)),
        (Some(1), Some(3), Some(2))
    );
    assert_eq!(t.kept, 2);
}

#[test]
fn appended_messages_pair_by_message_id_and_size() {
    let primary = catalogue(
        vec![
            appended(5, "<a@x>", 10),
            appended(6, "<a@x>", 10),
            appended(7, "<b@x>", 20),
        ],
        8,
    );
    let replica = [
        appended(1, "<a@x>", 10),
        appended(2, "<a@x>", 10),
        appended(3, "<b@x>", 21),
    ];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!(t.kept, 2);
    assert_eq!(t.missing, vec![7]);
    assert_eq!((t.presented(1), t.presented(2)), (Some(5), Some(6)));
    assert_eq!(t.presented(3), Some(8));
}

#[test]
fn a_message_expunged_at_the_replica_is_missing() {
    let primary = catalogue(vec![known(1, "1"), known(2, "2"), known(3, "3")], 4);
    let replica = [known(1, "1"), known(3, "3")];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!(t.missing, vec![2]);
    assert_eq!(show(&t.to_replica(&set("1:3"))), "1,3");
    assert_eq!(show(&t.to_replica(&set("2"))), "4294967294");
}

#[test]
fn an_empty_catalogue_presents_replica_uids_above_uidnext() {
    let primary = catalogue(Vec::new(), 50);
    let replica = [known(1, "1"), known(2, "2")];
    let t = Translation::build(&primary, &replica, 9).unwrap();
    assert_eq!((t.presented(1), t.presented(2)), (Some(50), Some(51)));
    assert_eq!(show(&t.to_replica(&set("50:51"))), "1:2");
}

#[test]
fn a_translation_presents_a_catalogue_and_knows_when_it_changes_nothing() {
    // Back at the primary after a failback: the clients saw a, b as 10, 11 and c (from the
    // outage) as 12; the primary has c as 13 (something took 12 meanwhile).
    let seen = catalogue(vec![known(10, "a"), known(11, "b"), known(12, "c")], 13);
    let primary = [known(10, "a"), known(11, "b"), known(13, "c")];
    let t = Translation::build(&seen, &primary, 1111).unwrap();
    assert!(!t.is_identity());
    assert_eq!(t.presented(13), Some(12));
    assert_eq!(t.presented(14), Some(13));
    // What levee knows of the primary's mailbox, as the clients see it.
    let follower = catalogue(vec![known(10, "a"), known(13, "c"), known(14, "d")], 15);
    let shown = t.present(&follower);
    assert_eq!(
        shown.messages.keys().copied().collect::<Vec<_>>(),
        vec![10, 12, 13]
    );
    assert_eq!(shown.uidnext, 14);
    // The primary has exactly what the clients saw: nothing to translate.
    let same = [known(10, "a"), known(11, "b"), known(12, "c")];
    assert!(
        Translation::build(&seen, &same, 1111)
            .unwrap()
            .is_identity()
    );
    // A message the clients saw that the primary lacks is an EXPUNGE of its number.
    let short = [known(10, "a"), known(12, "c")];
    let t = Translation::build(&seen, &short, 1111).unwrap();
    assert_eq!(
        (t.missing.clone(), t.expunge_seqs.clone()),
        (vec![11], vec![2])
    );
}

#[test]
fn ranges_named_many_times_are_looked_up_once() {
    assert_eq!(
        merged(vec![(5, 9), (1, 3), (2, 6), (11, 12)]),
        vec![(1, 9), (11, 12)]
    );
    assert_eq!(merged(vec![(1, 3), (4, 4)]), vec![(1, 4)]);
    assert_eq!(merged(vec![(7, u32::MAX); 3]), vec![(7, u32::MAX)]);
    assert_eq!(merged(Vec::new()), Vec::new());
}
