//! The heart of levee: a client in IDLE keeps its connection when the primary's Dovecot
//! dies. levee logs in again for it at the replica, re-selects INBOX, re-enters IDLE, and
//! the client sees mail that arrived after the kill, with no BYE, no NO, no login prompt.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use levee_tests::clients::{decode_b64, imap_idle};
use levee_tests::{LeveeMode, ReplicaSite, Site, sample_message, send_sample, tail};

#[test]
fn idle_client_survives_the_primary_imap_server_dying() {
    let replica = ReplicaSite::start("imapfo-replica", LeveeMode::Child);
    let extra = replica.primary_extra(
        "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n",
    );
    let mut primary = Site::start_with("imapfo-primary", LeveeMode::Child, &extra);

    // One message at both sites first, so that both INBOXes agree.
    let verdict = send_sample(
        primary.dir.path(),
        primary.levee.ports.relay,
        "before-kill@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    primary.wait_for_messages("alice", &["before-kill@example.org".into()], 20);
    replica.wait_for_messages("alice", &["before-kill@example.org".into()], 20);

    let password = primary.password("alice");
    let mut client = imap_idle(primary.levee.ports.imaps, true, "alice", &password);
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "IDLING", "client did not reach IDLE: {line}");

    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    while primary
        .levee
        .metric("levee_imap_migrations_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the session was not moved\n{}",
            tail(&primary.levee.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("IDLE session moved {:?} after the kill", killed.elapsed());

    let verdict = send_sample(
        primary.dir.path(),
        primary.levee.ports.relay,
        "after-kill@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    line.clear();
    out.read_line(&mut line).unwrap();
    let result: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "no JSON from the IDLE client ({e}): {line}\n{}",
            tail(&primary.levee.log(), 30)
        )
    });
    assert_eq!(result["ok"], true, "{result}");
    let seen = result["untagged"].to_string();
    assert!(
        !seen.contains("BYE") && !seen.contains(" NO "),
        "the client saw an error: {seen}"
    );
    let body = decode_b64(result["body_b64"].as_str().unwrap());
    assert!(
        body.ends_with(&sample_message(
            "after-kill@example.org",
            "alice@example.test"
        )),
        "the client fetched something else:\n{}",
        String::from_utf8_lossy(&body)
    );
    assert!(client.wait().unwrap().success());
    let status = primary.levee.status();
    assert_eq!(
        status["failover"]["active"]["backend"], "replica",
        "{status}"
    );
}
