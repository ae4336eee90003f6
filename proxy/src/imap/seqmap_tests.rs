use super::*;
use crate::imap::test_support::{catalogue, known};

/// The primary stored messages a, b, c, d as UIDs 1, 2, 3, 4; the replica stored them as
/// b, a, d, c (UIDs 1..4), then e arrived there (UID 5, presented as 5).
fn translation() -> Translation {
    let primary = catalogue(
        vec![known(1, "a"), known(2, "b"), known(3, "c"), known(4, "d")],
        5,
    );
    let replica = [
        known(1, "b"),
        known(2, "a"),
        known(3, "d"),
        known(4, "c"),
        known(5, "e"),
    ];
    Translation::build(&primary, &replica, 2222).unwrap()
}

fn set(text: &str) -> SequenceSet {
    SequenceSet::try_from(text).unwrap()
}

fn numbers(set: &SequenceSet) -> Vec<u32> {
    let mut out = expand(set, 1000).expect("a small set");
    out.sort_unstable();
    out
}

fn head(map: &mut SeqMap, line: &str, seq_search: bool) -> Option<String> {
    map.response_head(line.as_bytes(), seq_search)
        .map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn numbers_follow_the_uids_the_client_knows() {
    let t = translation();
    let mut map = SeqMap::new(&t, &[1, 2, 3, 4, 5], 5).expect("orders differ");
    // The client's message 1 is a (its UID 1), which is the server's message 2.
    assert_eq!(
        (1..=5).map(|i| map.to_server(i)).collect::<Vec<_>>(),
        vec![2, 1, 4, 3, 5]
    );
    assert_eq!(
        (1..=6).map(|j| map.to_client(j)).collect::<Vec<_>>(),
        vec![2, 1, 4, 3, 5, 6]
    );
    assert_eq!(numbers(&map.set_to_server(&set("1"))), vec![2]);
    assert_eq!(numbers(&map.set_to_server(&set("2:3"))), vec![1, 4]);
    assert_eq!(
        numbers(&map.set_to_server(&set("1:*"))),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(numbers(&map.set_to_server(&set("3:*"))), vec![3, 4, 5]);
    assert_eq!(numbers(&map.set_to_server(&set("*"))), vec![5]);

    // Responses: FETCH and SEARCH numbers become the client's; UID SEARCH is not ours.
    assert_eq!(
        head(&mut map, "* 1 FETCH (FLAGS (\\Seen))\r\n", false).as_deref(),
        Some("* 2 FETCH (FLAGS (\\Seen))\r\n")
    );
    assert_eq!(
        head(&mut map, "* SEARCH 1 3 5\r\n", true).as_deref(),
        Some("* SEARCH 2 4 5\r\n")
    );
    assert_eq!(head(&mut map, "* SEARCH 1 3 5\r\n", false), None);
    assert_eq!(
        head(&mut map, "* SORT 3 1\r\n", true).as_deref(),
        Some("* SORT 4 2\r\n")
    );
    assert_eq!(
        head(
            &mut map,
            "* ESEARCH (TAG \"x\") MIN 1 MAX 3 ALL 1,3\r\n",
            true
        )
        .as_deref(),
        Some("* ESEARCH (TAG \"x\") MIN 2 MAX 4 ALL 2,4\r\n")
    );
    assert_eq!(
        head(&mut map, "* OK [UNSEEN 3] first unseen\r\n", false).as_deref(),
        Some("* OK [UNSEEN 4] first unseen\r\n")
    );
}

#[test]
fn expunges_and_arrivals_keep_both_orders_in_step() {
    let t = translation();
    let mut map = SeqMap::new(&t, &[1, 2, 3, 4, 5], 5).unwrap();
    // The server expunges its message 1 (b): for the client that is message 2.
    assert_eq!(
        head(&mut map, "* 1 EXPUNGE\r\n", false).as_deref(),
        Some("* 2 EXPUNGE\r\n")
    );
    // Left: a, d, c, e at the server; a, c, d, e for the client.
    assert_eq!(
        (1..=4).map(|j| map.to_client(j)).collect::<Vec<_>>(),
        vec![1, 3, 2, 4]
    );
    assert_eq!(numbers(&map.set_to_server(&set("2"))), vec![3]);
    // A new message arrives: last in both orders.
    assert_eq!(head(&mut map, "* 5 EXISTS\r\n", false), None);
    assert_eq!(numbers(&map.set_to_server(&set("*"))), vec![5]);
    assert_eq!(numbers(&map.set_to_server(&set("4:*"))), vec![4, 5]);
    assert_eq!(
        head(&mut map, "* 5 FETCH (UID 6)\r\n", false).as_deref(),
        Some("* 5 FETCH (UID 6)\r\n")
    );
    // Expunging one of the arrivals moves nothing else.
    assert_eq!(
        head(&mut map, "* 5 EXPUNGE\r\n", false).as_deref(),
        Some("* 5 EXPUNGE\r\n")
    );
    assert_eq!(map.exists, 4);
}

#[test]
fn no_map_when_the_orders_agree() {
    let primary = catalogue(vec![known(1, "a"), known(2, "b")], 3);
    let t = Translation::build(&primary, &[known(7, "a"), known(9, "b")], 2).unwrap();
    assert!(t.ordered);
    assert_eq!(SeqMap::new(&t, &[7, 9], 2), None);
}

#[test]
fn the_listing_is_read_from_its_esearch_line() {
    assert_eq!(
        listed_uids(
            b"* ESEARCH (TAG \"levee.list\") UID ALL 1:3,7\r\n",
            "levee.list"
        ),
        Some(vec![1, 2, 3, 7])
    );
    assert_eq!(
        listed_uids(b"* ESEARCH (TAG \"levee.list\") UID\r\n", "levee.list"),
        Some(Vec::new())
    );
    assert_eq!(
        listed_uids(b"* ESEARCH (TAG \"a1\") UID ALL 1:3\r\n", "levee.list"),
        None
    );
    assert_eq!(listed_uids(b"* 3 EXISTS\r\n", "levee.list"), None);
}

#[test]
fn a_set_larger_than_the_mailbox_is_not_spelled_out() {
    assert_eq!(expand(&set("1:3,7"), 4), Some(vec![1, 2, 3, 7]));
    assert_eq!(expand(&set("1:3,7"), 3), None);
    // What a broken server might answer: four billion numbers would take 16 GB.
    assert_eq!(expand(&set("1:4294967295"), 10_000_000), None);
    let line = b"* ESEARCH (TAG \"levee.list\") UID ALL 1:3333333332,4,6\r\n";
    assert_eq!(listed_uids(line, "levee.list"), None);
}

#[test]
fn a_set_naming_messages_many_times_maps_each_once() {
    let t = translation();
    let map = SeqMap::new(&t, &[1, 2, 3, 4, 5], 5).expect("orders differ");
    let repeated = vec!["2:4"; 5_000].join(",");
    let mapped = map.set_to_server(&set(&repeated));
    assert_eq!(numbers(&mapped), vec![1, 3, 4]);
    assert_eq!(
        numbers(&map.set_to_server(&set("2:3,3:4,1"))),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn uid_esearch_min_and_max_come_from_all_in_the_clients_order() {
    let t = translation();
    let head = |line: &str| {
        crate::imap::rewrite::response_head(line.as_bytes(), &t, true)
            .map(|b| String::from_utf8(b).unwrap())
    };
    // The replica's 1 and 2 are b and a: the client's 2 and 1. The lowest of them for
    // the client is 1, though the replica's lowest (its 1) is the client's 2.
    assert_eq!(
        head("* ESEARCH (TAG \"a\") UID MIN 1 ALL 1:2 MAX 2\r\n").as_deref(),
        Some("* ESEARCH (TAG \"a\") UID MIN 1 ALL 1:2 MAX 2\r\n")
    );
    assert_eq!(
        head("* ESEARCH (TAG \"a\") UID ALL 1,3 MIN 1 MAX 3 COUNT 2\r\n").as_deref(),
        Some("* ESEARCH (TAG \"a\") UID ALL 2,4 MIN 2 MAX 4 COUNT 2\r\n")
    );
    // Without ALL each is translated where it stands.
    assert_eq!(
        head("* ESEARCH (TAG \"a\") UID MIN 1\r\n").as_deref(),
        Some("* ESEARCH (TAG \"a\") UID MIN 2\r\n")
    );
}
