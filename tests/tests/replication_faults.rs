//! Replication under faults, end to end with real Postfix and Dovecot at both sites: the
//! replica daemon stopped or `kill -9`ed under load, the primary `kill -9`ed mid-stream, sync
//! mode holding 250s for the replica and degrading when it freezes, and what `/status` and
//! `/metrics` show meanwhile.
//!
//! Every acknowledged message is tracked by its Message-ID (smtp_load.py prints
//! `ACK <message-id>` the moment it hears 250) and counted in the replica's Maildir and
//! journal. The tests run one at a time (they time 250s and kill daemons on a small machine).

mod replication_common;

use replication_common::*;

#[test]
fn replica_stopped_under_load_catches_up_exactly_once() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-stop-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-stop-p",
        LeveeMode::InProcess,
        &replica.link.primary_section("async", "2s"),
    );
    wait_connected(&primary.levee, &replica.daemon, true, 10);
    let mut lag_while_down = 0;
    let outcome = load(primary.levee.ports.relay.port(), "stopped", 4, 50, |n| {
        if n == 30 {
            replica.daemon.stop();
            wait_connected(&primary.levee, &replica.daemon, false, 5);
        }
        if n == 120 {
            lag_while_down = u64_at(&primary.levee.status(), "/replication/lag_records");
            replica.daemon.restart();
        }
    });
    assert_eq!(
        outcome.errors, 0,
        "async mode: the replica's outage reached clients"
    );
    assert_eq!(outcome.acked.len(), 200);
    assert!(
        lag_while_down >= 50,
        "records journaled while the replica was down should be lag: {lag_while_down}"
    );

    let head = wait_caught_up(&primary.levee, &replica.daemon, 60);
    let counts = inbox_counts(&replica.stack, "alice");
    let (missing, duplicated) = exactly_once(&outcome.acked, &counts);
    assert!(missing.is_empty(), "acked, never applied: {missing:?}");
    assert!(duplicated.is_empty(), "applied twice: {duplicated:?}");
    assert_eq!(
        counts.values().sum::<usize>(),
        outcome.acked.len(),
        "messages nobody sent at the replica: {counts:?}"
    );

    replica.daemon.stop();
    let journal = replica.open_journal();
    assert_eq!(journal.head(), head);
    let journaled = message_ids(&journal.read_from(1, usize::MAX).unwrap());
    let unique: HashSet<&String> = journaled.iter().collect();
    assert_eq!(
        unique.len(),
        journaled.len(),
        "a Message-ID twice in the journal"
    );
    let missing: Vec<&String> = outcome
        .acked
        .iter()
        .filter(|id| !unique.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acked, not in the replica journal: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 of `levee replica` mid-stream, restarted each time.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct ReplicaKillReport {
    acked: Vec<String>,
    counts: HashMap<String, usize>,
    kills: Vec<String>,
    head: u64,
    /// Records a restarted applier found already at the standby (and did not deliver again).
    found_at_standby: usize,
}

/// What the applier logs when a restart finds a record's copy already at the standby.
const FOUND: &str = "the standby already has this record's copy";

/// When the scenario's `kill -9`s come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillWhen {
    /// While records stream in: 30 more received since the restart (or, all received, 10
    /// more applied).
    Receiving,
    /// While the applier delivers: `n` more applied since the restart, more pending. Most
    /// of an applier's time per record is between its final dot and the flush of the
    /// record's state, so most of these kills land there.
    Applying(u64),
}

/// Loads the primary while `levee replica` is `kill -9`ed `kills` times (or more, see
/// below; each time restarted at once); asserts no loss and identical journals, and returns
/// the replica's inbox counts.
fn replica_kill_9_scenario(name: &str, kills: usize, when: KillWhen) -> ReplicaKillReport {
    let mut replica = ReplicaSite::start(&format!("{name}-r"), LeveeMode::Child);
    let mut primary = Site::start_with(
        &format!("{name}-p"),
        LeveeMode::InProcess,
        &replica.link.primary_section("async", "2s"),
    );
    wait_connected(&primary.levee, &replica.daemon, true, 10);
    // The load runs in bursts (8 × 2 threads × 25 messages, 400 ms apart) so that the
    // stream is still busy when the kills come.
    let port = primary.levee.ports.relay.port();
    let prefix = name.to_string();
    let loader = std::thread::spawn(move || {
        let mut total = LoadOutcome::default();
        for burst in 0..8 {
            let outcome = load(port, &format!("{prefix}-{burst}"), 2, 25, |_| {});
            total.acked.extend(outcome.acked);
            total.errors += outcome.errors;
            std::thread::sleep(Duration::from_millis(400));
        }
        total
    });
    // Each kill waits until the restarted replica is busy again. While applying, a kill
    // lands between a final dot and the flush only about half of the time: up to twice
    // `kills` are made until one did (the applier's log says so after the restart).
    let found = |replica: &ReplicaSite| replica.daemon.log().matches(FOUND).count();
    let mut killed_at = Vec::new();
    let (mut last_durable, mut last_applied) = (0, 0);
    while killed_at.len() < kills
        || (matches!(when, KillWhen::Applying(_))
            && killed_at.len() < 2 * kills
            && found(&replica) == 0)
    {
        let busy = wait_until(
            60,
            "replica busy again after its restart",
            || {
                let r = replica.daemon.status();
                let head = u64_at(&primary.levee.status(), "/journal_head");
                let (durable, applied) = (u64_at(&r, "/durable_seq"), u64_at(&r, "/applied_seq"));
                let busy = match when {
                    KillWhen::Receiving => {
                        durable >= last_durable + 30
                            || (durable == head && applied >= last_applied + 10 && applied < head)
                    }
                    // Everything applied: nothing left to kill into.
                    KillWhen::Applying(_) if applied == head && killed_at.len() >= kills => {
                        return Some(None);
                    }
                    KillWhen::Applying(n) => applied >= last_applied + n && applied < durable,
                };
                busy.then_some(Some((durable, applied)))
            },
            || describe(&primary.levee, &replica.daemon),
        );
        let Some((durable, applied)) = busy else {
            break;
        };
        replica.daemon.kill();
        killed_at.push(format!("durable {durable}/applied {applied}"));
        (last_durable, last_applied) = (durable, applied);
        replica.daemon.restart();
    }
    let outcome = loader.join().expect("load thread");
    assert_eq!(
        outcome.errors, 0,
        "async mode: replica crashes reached clients"
    );
    assert_eq!(outcome.acked.len(), 400);

    let head = wait_caught_up(&primary.levee, &replica.daemon, 90);
    let counts = inbox_counts(&replica.stack, "alice");
    primary.levee.stop();
    replica.daemon.stop();
    let found_at_standby = found(&replica);
    let records = assert_same_journal(&primary.open_journal(), &replica.open_journal());
    let journaled: HashSet<String> = message_ids(&records).into_iter().collect();
    let unjournaled: Vec<&String> = outcome
        .acked
        .iter()
        .filter(|id| !journaled.contains(*id))
        .collect();
    assert!(
        unjournaled.is_empty(),
        "acked, not in the replica journal: {unjournaled:?}"
    );
    let (missing, duplicated) = exactly_once(&outcome.acked, &counts);
    assert!(
        missing.is_empty(),
        "acked, never applied at the replica: {missing:?}"
    );
    eprintln!(
        "{name}: {} acked, head {head}, kill -9 of levee replica at [{}], {found_at_standby} \
         found at the standby after a restart, {} duplicated at the replica: {duplicated:?}",
        outcome.acked.len(),
        killed_at.join(", "),
        duplicated.len()
    );
    ReplicaKillReport {
        acked: outcome.acked,
        counts,
        kills: killed_at,
        head,
        found_at_standby,
    }
}

#[test]
fn replica_kill_9_mid_stream_loses_nothing_and_journals_match() {
    let _serial = serial();
    replica_kill_9_scenario("rf-kill-replica", 4, KillWhen::Receiving);
}

/// Ten or more `kill -9`s while the applier delivers, about half of them between the
/// standby's final LMTP reply and the flush of the record's state: the restarted applier
/// finds those copies at the standby and does not deliver them again. (Without the check,
/// 7 of 400 arrived twice over 10 kills.)
#[test]
fn replica_kill_9_applies_each_message_exactly_once() {
    let _serial = serial();
    let report = replica_kill_9_scenario("rf-kill-once", 10, KillWhen::Applying(8));
    let (_, duplicated) = exactly_once(&report.acked, &report.counts);
    assert!(
        duplicated.is_empty(),
        "{} of {} messages applied twice across {} kill -9 at [{}] (head {}): {duplicated:?}",
        duplicated.len(),
        report.acked.len(),
        report.kills.len(),
        report.kills.join(", "),
        report.head
    );
    // Without a kill inside the window the test would prove nothing.
    assert!(
        report.found_at_standby >= 1,
        "no kill landed between the standby's reply and the applier's flush: {:?}",
        report.kills
    );
}

// ---------------------------------------------------------------------------------------
// 3. kill -9 of `levee run` mid-stream, restarted: the stream resumes.
// ---------------------------------------------------------------------------------------

#[test]
fn primary_kill_9_mid_stream_resumes_and_journals_match() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-kill-primary-r", LeveeMode::Child);
    let mut primary = Site::start_with(
        "rf-kill-primary-p",
        LeveeMode::Child,
        &replica.link.primary_section("async", "2s"),
    );
    wait_connected(&primary.levee, &replica.daemon, true, 10);
    let mut acked = Vec::new();
    for round in 0..2 {
        let kill_at = 50 + round * 40;
        let mut killed = false;
        let outcome = load(
            primary.levee.ports.relay.port(),
            &format!("pkill{round}"),
            4,
            60,
            |n| {
                if n == kill_at {
                    primary.levee.kill();
                    killed = true;
                    std::thread::sleep(Duration::from_millis(300));
                    primary.levee.restart();
                }
            },
        );
        assert!(killed, "load ended before the kill point");
        acked.extend(outcome.acked);
    }
    // A last round with nothing killed: the resumed stream carries it too.
    let outcome = load(
        primary.levee.ports.relay.port(),
        "pkill-after",
        2,
        20,
        |_| {},
    );
    assert_eq!(outcome.errors, 0);
    acked.extend(outcome.acked);

    let head = wait_caught_up(&primary.levee, &replica.daemon, 90);
    let counts = inbox_counts(&replica.stack, "alice");
    primary.levee.stop();
    replica.daemon.stop();
    let records = assert_same_journal(&primary.open_journal(), &replica.open_journal());
    assert_eq!(records.len() as u64, head);
    let journaled = message_ids(&records);
    let set: HashSet<&String> = journaled.iter().collect();
    let unjournaled: Vec<&String> = acked.iter().filter(|id| !set.contains(id)).collect();
    assert!(
        unjournaled.is_empty(),
        "acked, not replicated: {unjournaled:?}"
    );
    // Every journaled message (acked or cut by the kill after its append) is applied once.
    let (missing, duplicated) = exactly_once(&journaled, &counts);
    assert!(missing.is_empty(), "journaled, never applied: {missing:?}");
    assert!(duplicated.is_empty(), "applied twice: {duplicated:?}");
    eprintln!(
        "primary kill -9: {} acked, {} journaled, replica identical",
        acked.len(),
        journaled.len()
    );
}

// ---------------------------------------------------------------------------------------
// 4. The applier's duplicate check and its connection to the standby.
// ---------------------------------------------------------------------------------------

/// Restarts the replica daemon with record `seq` pending again, as a `kill -9` between the
/// standby's reply and the applier's flush leaves it.
fn reapply(replica: &mut ReplicaSite, seq: u64) {
    replica.daemon.stop();
    reset_to_pending(replica, seq);
    replica.daemon.restart();
}

/// The record the applier cannot know the fate of (the first after a start) is looked for
/// at the standby first: found, it is not delivered again; gone, it is; and while the
/// standby cannot be asked, it waits. A recipient the standby no longer knows is not looked
/// for (it has no mailbox to log in to) and does not hold the record up.
#[test]
fn first_record_after_a_restart_is_checked_at_the_standby() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-dedupe-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-dedupe-p",
        LeveeMode::InProcess,
        &replica.link.primary_section("async", "2s"),
    );
    wait_connected(&primary.levee, &replica.daemon, true, 10);
    let ids: Vec<String> = (0..3).map(|i| format!("dedupe-{i}@example.org")).collect();
    let last = ids.last().unwrap();
    for id in &ids {
        let mut to = vec![RCPT];
        if id == last {
            to.push("carol@example.test");
        }
        let body = levee_tests::sample_message(id, RCPT);
        let file = levee_tests::message_file(primary.dir.path(), &format!("{id}.eml"), &body);
        let verdict = levee_tests::clients::smtp_send(
            primary.levee.ports.relay,
            levee_tests::clients::Security::Plain,
            None,
            "sender@example.org",
            &to,
            &file,
        );
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    let head = wait_caught_up(&primary.levee, &replica.daemon, 30);
    assert_eq!(
        inbox_counts(&replica.stack, "carol").get(last.as_str()),
        Some(&1)
    );
    replica.daemon.stop();
    let seq = seq_of(&replica, last);
    // carol leaves the standby (not the primary): the standby's LMTP refuses her now.
    let passwd = replica.stack.dir().join("dovecot/passwd");
    let users = std::fs::read_to_string(&passwd).unwrap();
    let without: String = users
        .lines()
        .filter(|l| !l.starts_with("carol:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, users);
    std::fs::write(&passwd, without).unwrap();
    let once = |replica: &ReplicaSite| {
        let counts = inbox_counts(&replica.stack, "alice");
        let (missing, duplicated) = exactly_once(&ids, &counts);
        assert!(missing.is_empty(), "missing at the replica: {missing:?}");
        assert!(duplicated.is_empty(), "applied twice: {duplicated:?}");
    };

    // (a) The standby has the copy: it is found by its trace id and not delivered again.
    reapply(&mut replica, seq);
    wait_applied(&replica, head, 30);
    once(&replica);
    assert!(
        replica.daemon.log().contains(FOUND),
        "the applier did not say it found the copy:\n{}",
        tail(&replica.daemon.log(), 20)
    );

    // (b) The copy is gone (its owner deleted it): the record is delivered again, once, with
    // the trace header above the client's bytes.
    std::fs::remove_file(maildir_file(&replica.stack, "alice", last)).expect("delete copy");
    reapply(&mut replica, seq);
    wait_applied(&replica, head, 30);
    once(&replica);
    let copy = std::fs::read(maildir_file(&replica.stack, "alice", last)).unwrap();
    let trace = format!("(levee apply) with LMTP id L{seq}.");
    assert!(
        levee_tests::contains(&copy, trace.as_bytes()),
        "no trace header {trace:?} in\n{}",
        String::from_utf8_lossy(&copy)
    );
    assert!(
        copy.ends_with(&levee_tests::sample_message(last, RCPT)),
        "the client's bytes were altered below the trace headers"
    );

    // (c) The standby cannot be asked (a wrong master password): the record waits rather
    // than risk a second copy, and goes on once the check works again.
    let config = std::fs::read_to_string(&replica.daemon.config_path).unwrap();
    let wrong = replica.dir.path().join("wrong-master.password");
    std::fs::write(&wrong, "not-the-master-password\n").unwrap();
    let password = replica.stack.master_password_file();
    let broken = config.replace(
        &password.display().to_string(),
        &wrong.display().to_string(),
    );
    assert_ne!(broken, config);
    std::fs::write(&replica.daemon.config_path, broken).unwrap();
    reapply(&mut replica, seq);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        applied_seq(&replica),
        seq - 1,
        "applied without its duplicate check"
    );
    once(&replica);
    assert!(
        replica
            .daemon
            .log()
            .contains("duplicate check for alice@example.test"),
        "the applier did not say why it waits:\n{}",
        tail(&replica.daemon.log(), 20)
    );
    assert!(
        !replica.daemon.log().contains("not-the-master-password"),
        "a password reached the log"
    );
    replica.daemon.stop();
    std::fs::write(&replica.daemon.config_path, config).unwrap();
    replica.daemon.restart();
    wait_applied(&replica, head, 30);
    once(&replica);
}

/// Catching up after a backlog runs over one LMTP connection, not one per message, and
/// the connection is closed once idle.
#[test]
fn catch_up_reuses_one_lmtp_connection() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-lmtp-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-lmtp-p",
        LeveeMode::InProcess,
        &replica.link.primary_section("async", "2s"),
    );
    wait_connected(&primary.levee, &replica.daemon, true, 10);
    replica.daemon.stop();
    let outcome = load(primary.levee.ports.relay.port(), "backlog", 2, 30, |_| {});
    assert_eq!(outcome.acked.len(), 60);
    let connects = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("lmtp(") && l.contains("Connect from"))
            .count()
    };
    let before = connects(&dovecot_log_lines(&replica.stack));
    replica.daemon.restart();
    let started = Instant::now();
    wait_caught_up(&primary.levee, &replica.daemon, 60);
    let catch_up = started.elapsed();
    let counts = inbox_counts(&replica.stack, "alice");
    let (missing, duplicated) = exactly_once(&outcome.acked, &counts);
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "{missing:?} {duplicated:?}"
    );
    let lines = dovecot_log_lines(&replica.stack);
    let used = connects(&lines) - before;
    eprintln!("catch-up of 60 messages: {catch_up:?}, {used} LMTP connection(s)");
    assert!(
        (1..=2).contains(&used),
        "{used} LMTP connections for 60 messages\n{}",
        tail(&lines.join("\n"), 30)
    );
    // Idle for longer than the applier keeps a connection: it says QUIT (Dovecot logs
    // "Logged out"; a dropped connection would be "Connection closed").
    wait_until(
        15,
        "the idle LMTP connection closed",
        || {
            dovecot_log_lines(&replica.stack)
                .iter()
                .any(|l| {
                    l.contains("lmtp(") && l.contains("Disconnect from") && l.contains("Logged out")
                })
                .then_some(())
        },
        || tail(&dovecot_log_lines(&replica.stack).join("\n"), 30),
    );
}
