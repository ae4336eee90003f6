//! UID continuity and mailbox state across a failover, with real Dovecot at both sites: a
//! client that knew UIDs and UIDVALIDITY from the primary keeps them on the replica, on the
//! same connection; what it flagged, deleted and saved to Sent at the primary is so at the
//! replica.

use std::time::{Duration, Instant};

use base64::Engine;
use levee_tests::imap_steps::ImapSteps;
use levee_tests::{LeveeMode, ReplicaSite, Site, sample_message, send_sample, tail};
use serde_json::{Value, json};

fn uid_of(list: &[Value], message_id: &str) -> Option<u64> {
    let wanted = format!("<{message_id}>");
    list.iter()
        .find(|m| m["message_id"] == wanted.as_str())
        .and_then(|m| m["uid"].as_u64())
}

fn flags_of(list: &[Value], message_id: &str) -> Vec<String> {
    let wanted = format!("<{message_id}>");
    list.iter()
        .find(|m| m["message_id"] == wanted.as_str())
        .map(|m| {
            m["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// levee's own log lines (the child logs at trace level, dependencies included).
fn levee_lines(log: &str) -> String {
    let own: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("levee") && !l.contains("sled::") && !l.contains("rustls::"))
        .collect();
    own[own.len().saturating_sub(60)..].join("\n")
}

/// Polls `check` on the replica's own Dovecot until it holds.
fn wait_at_replica(replica: &ReplicaSite, what: &str, check: impl Fn(&mut ImapSteps) -> bool) {
    let password = replica.password("alice");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut direct = ImapSteps::login_plain(replica.stack.imap_addr(), "alice", &password);
        if check(&mut direct) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never reached the replica\n{}",
            tail(&replica.daemon.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn uids_flags_expunges_and_sent_items_survive_a_failover() {
    let replica = ReplicaSite::start("cont-replica", LeveeMode::Child);
    let extra = replica.primary_extra(
        "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n",
    );
    let mut primary = Site::start_with("cont-primary", LeveeMode::Child, &extra);

    // A message that reached the primary without levee: the primary's UIDs are then not
    // the replica's, and its INBOX (and UIDVALIDITY) is older.
    let direct = send_sample(
        primary.dir.path(),
        primary.stack.smtp_addr(),
        "direct@example.org",
        "alice@example.test",
    );
    assert_eq!(direct["code"], 250, "{direct}");
    primary.wait_for_messages("alice", &["direct@example.org".into()], 20);
    std::thread::sleep(Duration::from_millis(1100));
    let all = primary.send_through_levee(
        &["keep@example.org", "gone@example.org", "read@example.org"],
        "alice@example.test",
        "alice",
    );
    replica.wait_for_messages("alice", &all, 20);

    let password = primary.password("alice");
    let mut client = ImapSteps::login(primary.levee.ports.imaps, "alice", &password);
    let before_select = client.select("INBOX");
    let before = client.list();
    assert_eq!(before.len(), 4, "{before:?}");
    let validity = before_select["uidvalidity"].as_u64().unwrap();

    client
        .ok(json!({"op": "flag", "uid": uid_of(&before, "keep@example.org"), "flag": "\\Flagged"}));
    client.ok(json!({"op": "delete", "uid": uid_of(&before, "gone@example.org")}));
    let sent = b"From: alice@example.test\r\nTo: bob@example.org\r\nSubject: offer accepted\r\nMessage-ID: <sent-1@example.test>\r\n\r\nWe take the kidney.\r\n";
    client.ok(json!({"op": "create", "mailbox": "Sent"}));
    client.ok(json!({
        "op": "append", "mailbox": "Sent", "flags": "(\\Seen)",
        "message_b64": base64::engine::general_purpose::STANDARD.encode(sent),
    }));

    // Each change is journaled at the primary as it happens...
    let deadline = Instant::now() + Duration::from_secs(10);
    for change in ["create", "append", "flags", "expunge"] {
        let sample = format!("levee_imap_changes_journaled_total{{change=\"{change}\"}}");
        while !primary
            .levee
            .metrics()
            .lines()
            .any(|l| l.starts_with(&sample))
        {
            assert!(
                Instant::now() < deadline,
                "no {change} change journaled\n{}",
                levee_lines(&primary.levee.log())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // ...travels as a journal record and is applied at the replica.
    wait_at_replica(&replica, "flag, expunge and Sent", |direct| {
        direct.select("INBOX");
        let list = direct.list();
        let inbox = uid_of(&list, "gone@example.org").is_none()
            && flags_of(&list, "keep@example.org").contains(&"\\Flagged".to_string());
        if !inbox || direct.step(json!({"op": "select", "mailbox": "Sent"}))["ok"] != true {
            return false;
        }
        let sent = direct.list();
        uid_of(&sent, "sent-1@example.test").is_some()
            && flags_of(&sent, "sent-1@example.test").contains(&"\\Seen".to_string())
    });

    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    primary.wait_metric("levee_imap_migrations_total", 1.0);

    // Same connection: the UIDs the client knew name the same messages.
    let noop = client.ok(json!({"op": "noop"}));
    // levee knew the replica's INBOX before the failover (kept while the primary was
    // active): it asked only for what changed since, and started following the INBOX at
    // the replica from that list.
    let lists = primary.levee.metrics();
    for how in ["changes", "kept"] {
        let sample = format!("levee_imap_replica_lists_total{{how=\"{how}\"}}");
        assert!(
            lists.lines().any(|l| l.starts_with(&sample)),
            "no {sample}: the replica's INBOX was fetched whole at the failover\n{lists}"
        );
    }
    let after = client.list();
    for id in ["keep@example.org", "read@example.org"] {
        assert_eq!(
            uid_of(&after, id),
            uid_of(&before, id),
            "{id} changed its UID\nbefore {before:?}\nafter {after:?}\n{}",
            tail(&primary.levee.log(), 40)
        );
    }
    assert_eq!(uid_of(&after, "gone@example.org"), None, "{after:?}");
    assert!(
        flags_of(&after, "keep@example.org").contains(&"\\Flagged".to_string()),
        "{after:?}"
    );
    let read = uid_of(&before, "read@example.org").unwrap();
    let body = client.ok(json!({"op": "fetch", "uid": read}));
    let body = base64::engine::general_purpose::STANDARD
        .decode(body["body_b64"].as_str().unwrap())
        .unwrap();
    assert!(
        body.ends_with(&sample_message("read@example.org", "alice@example.test")),
        "UID {read} is another message now:\n{}",
        String::from_utf8_lossy(&body)
    );
    // A search with RETURN options (ESEARCH) names the UIDs the client knows, both ways.
    let found = client.ok(json!({
        "op": "raw", "command": "UID",
        "args": ["SEARCH", "RETURN", "(MIN COUNT)", "UID", read.to_string()],
    }));
    let esearch = found["untagged"].to_string();
    assert!(
        esearch.contains(&format!("UID MIN {read} COUNT 1")),
        "UID SEARCH RETURN for UID {read}: {esearch}"
    );
    // The client learns that the message the replica never had is gone.
    assert!(
        noop["untagged"].to_string().contains("EXPUNGE"),
        "no EXPUNGE for the message only the primary had: {noop}"
    );

    // Mail after the failover gets a UID above every one the client knew.
    let verdict = send_sample(
        primary.dir.path(),
        primary.levee.ports.relay,
        "after@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let newest = loop {
        let list = client.list();
        if let Some(uid) = uid_of(&list, "after@example.org") {
            break uid;
        }
        assert!(Instant::now() < deadline, "no new mail on the replica");
        std::thread::sleep(Duration::from_millis(200));
    };
    let known_max = before
        .iter()
        .filter_map(|m| m["uid"].as_u64())
        .max()
        .unwrap();
    assert!(newest > known_max, "new UID {newest} <= {known_max}");

    // Selecting again shows the primary's UIDVALIDITY; Sent has the saved message.
    let again = client.select("INBOX");
    assert_eq!(again["uidvalidity"].as_u64(), Some(validity), "{again}");
    client.select("Sent");
    let sent_list = client.list();
    assert!(
        uid_of(&sent_list, "sent-1@example.test").is_some(),
        "{sent_list:?}"
    );
    let untagged = client.ok(json!({"op": "noop"}))["untagged"].to_string();
    assert!(!untagged.contains("BYE"), "{untagged}");
    assert_eq!(
        primary.levee.status()["failover"]["active"]["backend"],
        "replica"
    );
}
