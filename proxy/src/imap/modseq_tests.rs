use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::encode::Encoder;
use imap_codec::imap_types::command::Command;

use super::{STEP, Shift, command, response_head};

fn head(line: &str, shift: Shift) -> Option<String> {
    response_head(line.as_bytes(), shift).map(|b| String::from_utf8(b).unwrap())
}

/// The command as levee sends it to the server.
fn sent(line: &str, shift: Shift) -> String {
    let (rest, parsed) = CommandCodec::default()
        .decode(line.as_bytes())
        .unwrap_or_else(|e| panic!("{line}: {e:?}"));
    assert!(rest.is_empty());
    let mut parsed: Command<'_> = parsed;
    if !command(&mut parsed, shift) {
        return line.to_string();
    }
    String::from_utf8(CommandCodec::default().encode(&parsed).dump()).unwrap()
}

#[test]
fn epochs_shift_in_steps_and_the_first_not_at_all() {
    assert!(Shift::at_epoch(1).is_none());
    assert!(Shift::at_epoch(0).is_none());
    assert_eq!(Shift::at_epoch(2).0, STEP);
    assert_eq!(Shift::at_epoch(5).0, 4 * STEP);
    // No epoch overflows into a value past the 63 bits a client may hold.
    assert!(Shift::at_epoch(1 << 22).0 < 1 << 63);
}

#[test]
fn responses_present_raised_values() {
    let s = Shift(STEP);
    let up = |n: u64| (n + STEP).to_string();
    assert_eq!(
        head("* OK [HIGHESTMODSEQ 715] Highest\r\n", s).unwrap(),
        format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", up(715))
    );
    assert_eq!(
        head("* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ (12))\r\n", s).unwrap(),
        format!("* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ ({}))\r\n", up(12))
    );
    assert_eq!(
        head("* SEARCH 2 5 6 (MODSEQ 917)\r\n", s).unwrap(),
        format!("* SEARCH 2 5 6 (MODSEQ {})\r\n", up(917))
    );
    assert_eq!(
        head("* ESEARCH (TAG \"a\") UID ALL 1:3 modseq 44\r\n", s).unwrap(),
        format!("* ESEARCH (TAG \"a\") UID ALL 1:3 modseq {}\r\n", up(44))
    );
    assert_eq!(
        head("* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ 9)\r\n", s).unwrap(),
        format!("* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ {})\r\n", up(9))
    );
    assert_eq!(
        head("a1 OK [HIGHESTMODSEQ 8] Select completed\r\n", s).unwrap(),
        format!("a1 OK [HIGHESTMODSEQ {}] Select completed\r\n", up(8))
    );
}

#[test]
fn what_is_not_a_modseq_is_left_alone() {
    let s = Shift(STEP);
    // Before the first switchover: untouched, whatever the line.
    assert_eq!(head("* OK [HIGHESTMODSEQ 715]\r\n", Shift(0)), None);
    assert_eq!(head("* 3 FETCH (UID 7 FLAGS ())\r\n", s), None);
    assert_eq!(head("* OK [NOMODSEQ] Sorry\r\n", s), None);
    // A subject that reads like one.
    let envelope = "* 1 FETCH (ENVELOPE (NIL \"MODSEQ (5)\" NIL) MODSEQ (6))\r\n";
    assert_eq!(
        head(envelope, s).unwrap(),
        format!(
            "* 1 FETCH (ENVELOPE (NIL \"MODSEQ (5)\" NIL) MODSEQ ({}))\r\n",
            6 + STEP
        )
    );
    // A word that merely ends in MODSEQ, and a mailbox of that name.
    assert_eq!(head("* LIST () \"/\" XMODSEQ 5\r\n", s), None);
    assert_eq!(head("* STATUS MODSEQ (MESSAGES 3)\r\n", s), None);
}

#[test]
fn commands_ask_the_server_in_its_own_values() {
    let s = Shift(STEP);
    let p = |n: u64| (n + STEP).to_string();
    assert_eq!(
        sent(
            &format!("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE {})\r\n", p(30)),
            s
        ),
        "a UID FETCH 1:* FLAGS (CHANGEDSINCE 30)\r\n"
    );
    assert_eq!(
        sent(
            &format!(
                "a UID STORE 4 (UNCHANGEDSINCE {}) +FLAGS (\\Seen)\r\n",
                p(9)
            ),
            s
        ),
        "a UID STORE 4 (UNCHANGEDSINCE 9) +FLAGS (\\Seen)\r\n"
    );
    assert_eq!(
        sent(&format!("a SEARCH NOT MODSEQ {}\r\n", p(77)), s),
        "a SEARCH NOT MODSEQ 77\r\n"
    );
    assert_eq!(
        sent(
            &format!("a SELECT INBOX (QRESYNC (67890007 {} 1:9))\r\n", p(20)),
            s
        ),
        "a SELECT INBOX (QRESYNC (67890007 20 1:9))\r\n"
    );
}

#[test]
fn values_from_an_earlier_epoch_ask_for_every_change() {
    let s = Shift(2 * STEP);
    // Known at the replica in epoch 2, asked of the primary in epoch 3.
    let earlier = STEP + 500;
    assert_eq!(
        sent(
            &format!("a FETCH 1:* (FLAGS) (CHANGEDSINCE {earlier})\r\n"),
            s
        ),
        "a FETCH 1:* FLAGS (CHANGEDSINCE 1)\r\n"
    );
    assert_eq!(
        sent(
            &format!("a STORE 1 (UNCHANGEDSINCE {earlier}) +FLAGS (\\Seen)\r\n"),
            s
        ),
        "a STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)\r\n"
    );
    assert_eq!(
        sent(&format!("a EXAMINE INBOX (QRESYNC (5 {earlier}))\r\n"), s),
        "a EXAMINE INBOX (QRESYNC (5 1))\r\n"
    );
    // Commands that name no mod-sequence are not touched, nor anything in epoch 1.
    assert_eq!(sent("a FETCH 1 (FLAGS)\r\n", s), "a FETCH 1 (FLAGS)\r\n");
    assert_eq!(
        sent("a FETCH 1 (FLAGS) (CHANGEDSINCE 5)\r\n", Shift(0)),
        "a FETCH 1 (FLAGS) (CHANGEDSINCE 5)\r\n"
    );
}
