//! Hibernating IDLE sessions, with real Dovecot at both sites: a client quiet in IDLE
//! loses its connection to Dovecot (levee's is closed) but not its own, hears of new
//! mail, flag changes and expunges from levee, ends and re-enters IDLE without Dovecot,
//! and is opened on Dovecot again for its next command with the same UIDs. A failover
//! moves it without a login at the replica, and mail there reaches it too.

use levee_tests::imap_steps::ImapSteps;
use levee_tests::{LeveeMode, ReplicaSite, Site, send_sample};
use serde_json::{Value, json};

fn uid_of(list: &[Value], message_id: &str) -> Option<u64> {
    let wanted = format!("<{message_id}>");
    list.iter()
        .find(|m| m["message_id"] == wanted.as_str())
        .and_then(|m| m["uid"].as_u64())
}

/// Lines the client read in IDLE up to one naming `until`.
fn idle_until(client: &mut ImapSteps, until: &str) -> String {
    let answer = client.ok(json!({"op": "idle_wait", "until": until}));
    answer["lines"].to_string()
}

fn deliver(site: &Site, id: &str) {
    let verdict = send_sample(
        site.dir.path(),
        site.levee.ports.relay,
        id,
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
}

#[test]
fn idle_sessions_hibernate_hear_news_from_levee_and_wake_with_their_uids() {
    let replica = ReplicaSite::start("hib-replica", LeveeMode::Child);
    let extra = replica.primary_extra(
        "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n",
    );
    let mut primary = Site::start_with("hib-primary", LeveeMode::Child, &extra);
    primary
        .levee
        .reconfigure(|text| text.replacen("[imap]\n", "[imap]\nhibernate_after = \"1s\"\n", 1));
    let first = primary.send_through_levee(
        &["one@example.org", "two@example.org"],
        "alice@example.test",
        "alice",
    );
    replica.wait_for_messages("alice", &first, 20);

    let password = primary.password("alice");
    let mut client = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    client.select("INBOX");
    let before = client.list();
    let (one, two) = (
        uid_of(&before, "one@example.org").unwrap(),
        uid_of(&before, "two@example.org").unwrap(),
    );
    client.ok(json!({"op": "idle"}));
    primary.wait_metric("levee_imap_sessions_hibernating", 1.0);

    // News from another client and from the MTA, told by levee alone.
    let mut other = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    other.select("INBOX");
    other.ok(json!({"op": "flag", "uid": one, "flag": "\\Flagged"}));
    let flagged = idle_until(&mut client, "FETCH");
    assert!(
        flagged.contains("* 1 FETCH (FLAGS (") && flagged.contains("\\\\Flagged"),
        "{flagged}"
    );
    deliver(&primary, "three@example.org");
    let exists = idle_until(&mut client, "EXISTS");
    assert!(exists.contains("* 3 EXISTS"), "{exists}");
    other.ok(json!({"op": "delete", "uid": two}));
    let expunge = idle_until(&mut client, "EXPUNGE");
    assert!(expunge.contains("* 2 EXPUNGE"), "{expunge}");
    assert_eq!(
        primary.levee.metric("levee_imap_sessions_hibernating"),
        Some(1.0)
    );
    assert_eq!(
        primary
            .levee
            .metric("levee_imap_wakes_total")
            .unwrap_or(0.0),
        0.0
    );

    // DONE is answered without Dovecot; the next command opens the session again.
    client.ok(json!({"op": "idle_done"}));
    assert_eq!(
        primary
            .levee
            .metric("levee_imap_wakes_total")
            .unwrap_or(0.0),
        0.0
    );
    let woken = client.list();
    assert_eq!(primary.levee.metric("levee_imap_wakes_total"), Some(1.0));
    assert_eq!(uid_of(&woken, "one@example.org"), Some(one), "{woken:?}");
    assert_eq!(uid_of(&woken, "two@example.org"), None, "{woken:?}");
    let three = uid_of(&woken, "three@example.org").expect("the new message");
    assert_eq!(woken.len(), 2, "{woken:?}");

    // Hibernating again, the session moves to the replica without a login there, and
    // mail delivered there reaches it.
    client.ok(json!({"op": "idle"}));
    primary.wait_metric("levee_imap_hibernations_total", 2.0);
    primary.wait_metric("levee_imap_sessions_hibernating", 1.0);
    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    primary.wait_metric("levee_imap_migrations_total", 1.0);
    // As after any move: the count, unchanged.
    let moved = idle_until(&mut client, "EXISTS");
    assert!(moved.contains("* 2 EXISTS"), "{moved}");
    deliver(&primary, "four@example.org");
    let exists = idle_until(&mut client, "3 EXISTS");
    assert!(exists.contains("* 3 EXISTS"), "{exists}");
    assert_eq!(
        primary.levee.metric("levee_imap_wakes_total"),
        Some(1.0),
        "the session woke before its client asked"
    );
    client.ok(json!({"op": "idle_done"}));
    let after = client.list();
    assert_eq!(uid_of(&after, "one@example.org"), Some(one), "{after:?}");
    assert_eq!(
        uid_of(&after, "three@example.org"),
        Some(three),
        "{after:?}"
    );
    let four = uid_of(&after, "four@example.org").expect("mail delivered at the replica");
    assert!(four > three, "{after:?}");
    assert!(
        after[0]["flags"].to_string().contains("Flagged"),
        "{after:?}"
    );
    assert_eq!(
        primary.levee.status()["failover"]["active"]["backend"],
        "replica"
    );
}
