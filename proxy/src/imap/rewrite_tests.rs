use imap_codec::decode::Decoder;

use super::*;
use crate::imap::test_support::{catalogue, known};

/// Primary UIDs 10, 11, 15 (UIDVALIDITY 1111, UIDNEXT 16) are the replica's 1, 2, 3;
/// the replica's 4 arrived after the failover and is presented as 16.
fn translation() -> Translation {
    let primary = catalogue(vec![known(10, "1"), known(11, "2"), known(15, "3")], 16);
    let replica = [known(1, "1"), known(2, "2"), known(3, "3"), known(4, "4")];
    Translation::build(&primary, &replica, 2222).unwrap()
}

fn rewritten_command(line: &str) -> Option<String> {
    let (_, command) = CommandCodec::default().decode(line.as_bytes()).unwrap();
    super::command(&command, &translation(), None).map(|m| String::from_utf8(m.bytes).unwrap())
}

fn head(line: &str, uid_search: bool) -> Option<String> {
    response_head(line.as_bytes(), &translation(), uid_search)
        .map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn uid_sets_in_commands_become_the_replicas() {
    assert_eq!(
        rewritten_command("a UID FETCH 11:* (FLAGS)\r\n").as_deref(),
        Some("a UID FETCH 2:* FLAGS\r\n")
    );
    assert_eq!(
        rewritten_command("a UID STORE 15 +FLAGS (\\Seen)\r\n").as_deref(),
        Some("a UID STORE 3 +FLAGS (\\Seen)\r\n")
    );
    assert_eq!(
        rewritten_command("a UID MOVE 10,16 Trash\r\n").as_deref(),
        Some("a UID MOVE 1,4 Trash\r\n")
    );
    assert_eq!(
        rewritten_command("a SEARCH UNSEEN UID 12:15\r\n").as_deref(),
        Some("a SEARCH UNSEEN UID 3\r\n")
    );
    // Sequence numbers are the same on both servers; nothing to do.
    assert_eq!(rewritten_command("a FETCH 1:* (FLAGS)\r\n"), None);
    assert_eq!(rewritten_command("a NOOP\r\n"), None);
}

#[test]
fn uids_in_responses_become_the_clients() {
    assert_eq!(
        head("* OK [UIDVALIDITY 2222] UIDs valid\r\n", false).as_deref(),
        Some("* OK [UIDVALIDITY 1111] UIDs valid\r\n")
    );
    assert_eq!(
        head("* OK [UIDNEXT 5] Predicted next UID\r\n", false).as_deref(),
        Some("* OK [UIDNEXT 17] Predicted next UID\r\n")
    );
    assert_eq!(
        head("* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n", false).as_deref(),
        Some("* 3 FETCH (UID 15 FLAGS (\\Seen))\r\n")
    );
    assert_eq!(
        head("* 4 FETCH (FLAGS (\\Seen) UID 4 BODY[] {120}\r\n", false).as_deref(),
        Some("* 4 FETCH (FLAGS (\\Seen) UID 16 BODY[] {120}\r\n")
    );
    // A quoted "UID 2" inside an envelope is data, not the UID item.
    assert_eq!(
        head("* 2 FETCH (ENVELOPE (NIL \"UID 2\" NIL) UID 2)\r\n", false).as_deref(),
        Some("* 2 FETCH (ENVELOPE (NIL \"UID 2\" NIL) UID 11)\r\n")
    );
    assert_eq!(
        head("* SEARCH 1 3 4\r\n", true).as_deref(),
        Some("* SEARCH 10 15 16\r\n")
    );
    assert_eq!(head("* SEARCH 1 3 4\r\n", false), None);
    assert_eq!(
        head("* VANISHED (EARLIER) 1:2\r\n", false).as_deref(),
        Some("* VANISHED (EARLIER) 10:11\r\n")
    );
    assert_eq!(
        head("a OK [COPYUID 77 2:3 8:9] Moved\r\n", false).as_deref(),
        // One source UID for each destination UID, in the same order.
        Some("a OK [COPYUID 77 11,15 8:9] Moved\r\n")
    );
    assert_eq!(
        head("* ESEARCH (TAG \"a\") UID MIN 1 MAX 4 ALL 1:4\r\n", false).as_deref(),
        Some("* ESEARCH (TAG \"a\") UID MIN 10 MAX 16 ALL 10:11,15:16\r\n")
    );
    assert_eq!(head("* 5 EXISTS\r\n", false), None);
}

#[test]
fn status_of_a_translated_mailbox_shows_the_primarys_numbers() {
    let t = std::sync::Arc::new(translation());
    let of = |name: &str| (name == "INBOX").then(|| t.clone());
    let got = status_head(
        b"* STATUS INBOX (MESSAGES 4 UIDNEXT 5 UIDVALIDITY 2222)\r\n",
        of,
    )
    .map(|b| String::from_utf8(b).unwrap());
    assert_eq!(
        got.as_deref(),
        Some("* STATUS INBOX (MESSAGES 4 UIDNEXT 17 UIDVALIDITY 1111)\r\n")
    );
    assert_eq!(
        status_head(b"* STATUS Archive (UIDNEXT 5 UIDVALIDITY 9)\r\n", of),
        None
    );
}
