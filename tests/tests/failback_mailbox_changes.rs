//! What a client changes in its mailboxes at the replica while that is the active site
//! reaches the primary before a failback: a message saved to Sent (APPEND), a folder it
//! created and messages it copied or moved there (by UID and by message number), a flag it
//! set and a message it deleted. The replica keeps one copy of each (its applier does not
//! make them again), and back at the primary the client's session finds them.

use std::time::{Duration, Instant};

use base64::Engine;
use levee_proxy::admin::Role;
use levee_tests::admin::{AdminSetup, FAST_FAILOVER};
use levee_tests::clients::admin_call;
use levee_tests::imap_steps::ImapSteps;
use levee_tests::{LeveeMode, ReplicaSite, Site, tail};
use serde_json::{Value, json};

fn uid_of(list: &[Value], message_id: &str) -> Option<u64> {
    let wanted = format!("<{message_id}>");
    list.iter()
        .find(|m| m["message_id"] == wanted.as_str())
        .and_then(|m| m["uid"].as_u64())
}

/// The message number of the message with `message_id` in the selected mailbox.
fn seq_of(client: &mut ImapSteps, message_id: &str) -> usize {
    let wanted = format!("<{message_id}>");
    1 + client
        .list()
        .iter()
        .position(|m| m["message_id"] == wanted.as_str())
        .expect("the message in the mailbox")
}

/// How many messages of `mailbox` carry `message_id`, asked of a Dovecot directly.
fn count_in(steps: &mut ImapSteps, mailbox: &str, message_id: &str) -> Option<usize> {
    if steps.step(json!({"op": "select", "mailbox": mailbox}))["ok"] != true {
        return None;
    }
    let wanted = format!("<{message_id}>");
    Some(
        steps
            .list()
            .iter()
            .filter(|m| m["message_id"] == wanted.as_str())
            .count(),
    )
}

fn wait_until(what: &str, log: impl Fn() -> String, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn changes_made_at_the_replica_reach_the_primary_before_failback() {
    let admin = AdminSetup::new(&[("ops", Role::Operator)]);
    let replica = ReplicaSite::start("back-replica", LeveeMode::Child);
    let extra = replica.primary_extra(&format!(
        "{FAST_FAILOVER}{}",
        admin.section("drain_timeout = \"5s\"")
    ));
    let primary = Site::start_with("back-primary", LeveeMode::Child, &extra);
    let api = |path: &str, body: &str| {
        admin_call(
            admin.port,
            Some(&primary.cert_path()),
            Some(&admin.tokens[0]),
            "POST",
            path,
            Some(body),
        )
    };
    let log = || tail(&primary.levee.log(), 40);

    let early = primary.send_through_levee(
        &[
            "before@example.org",
            "doomed@example.org",
            "numbered@example.org",
            "moved@example.org",
        ],
        "alice@example.test",
        "alice",
    );
    replica.wait_for_messages("alice", &early, 20);

    let password = primary.password("alice");
    let mut client = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    client.ok(json!({"op": "create", "mailbox": "Sent"}));
    client.select("INBOX");
    let inbox = client.list();
    let before = uid_of(&inbox, "before@example.org").expect("the message in INBOX");
    let doomed = uid_of(&inbox, "doomed@example.org").expect("the message in INBOX");
    // The Sent folder exists at the replica too before the switch.
    let replica_password = replica.password("alice");
    let at_replica = |mailbox: &str, id: &str| {
        let password = &replica_password;
        let mut direct = ImapSteps::login_plain(replica.stack.imap_addr(), "alice", password);
        count_in(&mut direct, mailbox, id)
    };
    wait_until("Sent never reached the replica", log, || {
        at_replica("Sent", "none@example.org").is_some()
    });

    let switched = api("/v1/switchover", r#"{"to": "replica", "reason": "drill"}"#);
    assert_eq!(switched["status"], 200, "{switched}\n{}", log());

    // At the replica, through levee: save a sent message, make a folder, copy into it.
    client.ok(json!({"op": "noop"}));
    let outgoing = b"From: alice@example.test\r\nTo: transplant@example.org\r\nSubject: donor match\r\nMessage-ID: <outage-sent@example.test>\r\n\r\nThe kidney is on its way.\r\n";
    client.ok(json!({
        "op": "append", "mailbox": "Sent", "flags": "(\\Seen)",
        "message_b64": base64::engine::general_purpose::STANDARD.encode(outgoing),
    }));
    client.ok(json!({"op": "create", "mailbox": "Outage"}));
    client.ok(json!({"op": "copy", "uid": before, "mailbox": "Outage"}));
    // By message number: levee learns which messages from the server's COPYUID.
    let numbered = seq_of(&mut client, "numbered@example.org");
    client.ok(json!({"op": "copy", "seq": numbered, "mailbox": "Outage"}));
    let moved = seq_of(&mut client, "moved@example.org");
    client.ok(json!({"op": "move", "seq": moved, "mailbox": "Outage"}));
    client.ok(json!({"op": "flag", "uid": before, "flag": "\\Flagged"}));
    client.ok(json!({"op": "delete", "uid": doomed}));
    // levee follows INBOX at the replica too, and journals the flag and the expunge.
    wait_until(
        "the flag and the expunge at the replica were not journaled",
        log,
        || {
            let metrics = primary.levee.metrics();
            ["flags", "expunge"].iter().all(|change| {
                metrics.lines().any(|l| {
                    l.starts_with(&format!(
                        "levee_imap_changes_journaled_total{{change=\"{change}\"}}"
                    ))
                })
            })
        },
    );

    let back = api("/v1/failback", r#"{"reason": "primary fine"}"#);
    assert_eq!(back["status"], 200, "{back}\n{}", log());

    // The primary has each change once; the replica too (its applier did not redo them).
    let at_primary = |mailbox: &str, id: &str| {
        let mut direct = ImapSteps::login_plain(primary.stack.imap_addr(), "alice", &password);
        count_in(&mut direct, mailbox, id)
    };
    assert_eq!(at_primary("Sent", "outage-sent@example.test"), Some(1));
    assert_eq!(at_primary("INBOX", "doomed@example.org"), Some(0));
    let flagged = {
        let mut direct = ImapSteps::login_plain(primary.stack.imap_addr(), "alice", &password);
        direct.select("INBOX");
        let list = direct.list();
        let wanted = "<before@example.org>";
        list.iter()
            .find(|m| m["message_id"] == wanted)
            .map(|m| m["flags"].to_string())
            .unwrap_or_default()
    };
    assert!(flagged.contains("Flagged"), "{flagged}\n{}", log());
    for id in [
        "before@example.org",
        "numbered@example.org",
        "moved@example.org",
    ] {
        assert_eq!(at_primary("Outage", id), Some(1), "{id}\n{}", log());
        assert_eq!(at_replica("Outage", id), Some(1), "{id}\n{}", log());
    }
    assert_eq!(at_primary("INBOX", "numbered@example.org"), Some(1));
    assert_eq!(at_primary("INBOX", "moved@example.org"), Some(0));
    assert_eq!(at_replica("Sent", "outage-sent@example.test"), Some(1));

    // The client, moved back on its connection, finds the sent message in Sent.
    client.ok(json!({"op": "noop"}));
    client.select("Sent");
    let sent_box = client.list();
    assert!(
        uid_of(&sent_box, "outage-sent@example.test").is_some(),
        "{sent_box:?}\n{}",
        log()
    );
    // Every change copied by the resync (no message: the mail came before): append,
    // create, the three copies, the two expunges (the deletion and the move's), and the
    // flags (\Flagged, and \Deleted before the expunge when levee looked in between).
    let copied = primary
        .levee
        .metric("levee_resync_delivered_total")
        .unwrap_or(0.0);
    assert!((8.0..=9.0).contains(&copied), "{copied}\n{}", log());
}
