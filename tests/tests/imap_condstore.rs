//! CONDSTORE and QRESYNC clients (RFC 7162) across a failover, with real Dovecot at both
//! sites: the replica counts its own mod-sequences, so levee presents them above every one
//! the client knew at the primary. A client asking for the changes since what it knew is
//! told of the changes made at the replica, and a QRESYNC client selecting with the
//! UIDVALIDITY and UIDs it has from the primary learns what changed and what vanished.

use levee_tests::imap_steps::ImapSteps;
use levee_tests::{LeveeMode, ReplicaSite, Site, tail};
use serde_json::{Value, json};

fn uid_of(list: &[Value], message_id: &str) -> u64 {
    let wanted = format!("<{message_id}>");
    list.iter()
        .find(|m| m["message_id"] == wanted.as_str())
        .and_then(|m| m["uid"].as_u64())
        .unwrap_or_else(|| panic!("no {message_id} in {list:?}"))
}

/// The untagged responses of a step, one string each.
fn untagged(answer: &Value) -> Vec<String> {
    answer["untagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The number after `word` in the first untagged response that has it.
fn number_after(lines: &[String], word: &str) -> Option<u64> {
    lines.iter().find_map(|line| {
        let at = line.find(word)? + word.len();
        let digits: String = line[at..]
            .trim_start_matches([' ', '('])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// The untagged FETCH response for `uid`, if any.
fn fetch_of(lines: &[String], uid: u64) -> Option<&String> {
    let needle = format!("UID {uid} ");
    let closing = format!("UID {uid})");
    lines
        .iter()
        .find(|l| l.starts_with("FETCH") && (l.contains(&needle) || l.contains(&closing)))
}

fn raw(client: &mut ImapSteps, command: &str, args: &[&str]) -> Vec<String> {
    untagged(&client.ok(json!({"op": "raw", "command": command, "args": args})))
}

#[test]
fn condstore_and_qresync_clients_see_the_changes_made_at_the_replica() {
    let replica = ReplicaSite::start("modseq-replica", LeveeMode::Child);
    let extra = replica.primary_extra(
        "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n",
    );
    let mut primary = Site::start_with("modseq-primary", LeveeMode::Child, &extra);
    let ids = [
        "plain@example.org",
        "flag-me@example.org",
        "drop-me@example.org",
    ];
    let all = primary.send_through_levee(&ids, "alice@example.test", "alice");
    replica.wait_for_messages("alice", &all, 20);

    let password = primary.password("alice");
    let mut client = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    raw(&mut client, "ENABLE", &["CONDSTORE"]);
    let selected = client.select("INBOX");
    let validity = selected["uidvalidity"].as_u64().unwrap();
    let before = client.list();
    let (flag_me, drop_me) = (
        uid_of(&before, "flag-me@example.org"),
        uid_of(&before, "drop-me@example.org"),
    );
    let highest_uid = before.iter().filter_map(|m| m["uid"].as_u64()).max();
    // Flag changes at the primary raise its mod-sequences well past the replica's.
    for _ in 0..15 {
        for sign in ["+FLAGS", "-FLAGS"] {
            raw(
                &mut client,
                "UID",
                &["STORE", &flag_me.to_string(), sign, "(Busy)"],
            );
        }
    }
    let known = raw(&mut client, "UID", &["FETCH", "1:*", "(MODSEQ)"]);
    let known_modseq = known
        .iter()
        .filter_map(|l| number_after(std::slice::from_ref(l), "MODSEQ"))
        .max()
        .unwrap_or_else(|| panic!("no MODSEQ at the primary: {known:?}"));

    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    primary.wait_metric("levee_imap_migrations_total", 1.0);
    client.ok(json!({"op": "noop"}));

    // Another client of alice's, at the replica now, flags one message and deletes one.
    let mut other = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    other.select("INBOX");
    other.ok(json!({"op": "flag", "uid": flag_me, "flag": "\\Flagged"}));
    other.ok(json!({"op": "delete", "uid": drop_me}));

    // The first client, on its own connection: the changes since what it knew.
    let changed = raw(
        &mut client,
        "UID",
        &[
            "FETCH",
            "1:*",
            "(FLAGS)",
            &format!("(CHANGEDSINCE {known_modseq})"),
        ],
    );
    let flagged = fetch_of(&changed, flag_me).unwrap_or_else(|| {
        panic!(
            "the flag set at the replica is not among the changes since {known_modseq}: {changed:?}\n{}",
            tail(&primary.levee.log(), 30)
        )
    });
    assert!(flagged.contains("\\Flagged"), "{flagged}");
    let modseq = number_after(std::slice::from_ref(flagged), "MODSEQ").unwrap();
    assert!(
        modseq > known_modseq,
        "a change after the failover has MODSEQ {modseq}, not above the {known_modseq} the client knew: {flagged}"
    );

    // A QRESYNC client with what it knew from the primary.
    let mut resync = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    raw(&mut resync, "ENABLE", &["QRESYNC"]);
    let known_uids = format!("1:{}", highest_uid.unwrap());
    let answer = raw(
        &mut resync,
        "SELECT",
        &[
            "INBOX",
            &format!("(QRESYNC ({validity} {known_modseq} {known_uids}))"),
        ],
    );
    let flagged = fetch_of(&answer, flag_me).unwrap_or_else(|| {
        panic!("QRESYNC told nothing of the flag set at the replica: {answer:?}")
    });
    assert!(flagged.contains("\\Flagged"), "{flagged}");
    let vanished = answer
        .iter()
        .find(|l| l.starts_with("VANISHED"))
        .unwrap_or_else(|| panic!("QRESYNC told nothing of the deleted message: {answer:?}"));
    assert!(
        vanished.contains(&drop_me.to_string()),
        "VANISHED names the wrong UIDs (the deleted one was {drop_me}): {vanished}"
    );
    let highest = number_after(&answer, "HIGHESTMODSEQ").unwrap();
    assert!(
        highest > known_modseq,
        "HIGHESTMODSEQ {highest}: {answer:?}"
    );
    assert_eq!(
        number_after(&answer, "UIDVALIDITY"),
        Some(validity),
        "{answer:?}"
    );
}
