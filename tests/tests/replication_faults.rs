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
    kills: usize,
    head: u64,
}

/// Loads the primary while `levee replica` is `kill -9`ed four times (each time restarted at
/// once); asserts no loss and identical journals, and returns the replica's inbox counts.
fn replica_kill_9_scenario(name: &str) -> ReplicaKillReport {
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
    // Each kill waits until the restarted replica is busy again: it received 30 more
    // records, or (all received) it applied 10 more.
    let mut kills = Vec::new();
    let (mut last_durable, mut last_applied) = (0, 0);
    for _ in 0..4 {
        let (durable, applied) = wait_until(
            60,
            "replica busy again after its restart",
            || {
                let r = replica.daemon.status();
                let head = u64_at(&primary.levee.status(), "/journal_head");
                let (durable, applied) = (u64_at(&r, "/durable_seq"), u64_at(&r, "/applied_seq"));
                let busy = durable >= last_durable + 30
                    || (durable == head && applied >= last_applied + 10 && applied < head);
                busy.then_some((durable, applied))
            },
            || describe(&primary.levee, &replica.daemon),
        );
        replica.daemon.kill();
        kills.push(format!("durable {durable}/applied {applied}"));
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
        "{name}: {} acked, head {head}, kill -9 of levee replica at [{}], {} duplicated at the replica: {duplicated:?}",
        outcome.acked.len(),
        kills.join(", "),
        duplicated.len()
    );
    ReplicaKillReport {
        acked: outcome.acked,
        counts,
        kills: kills.len(),
        head,
    }
}

#[test]
fn replica_kill_9_mid_stream_loses_nothing_and_journals_match() {
    let _serial = serial();
    replica_kill_9_scenario("rf-kill-replica");
}

#[test]
#[ignore = "open (issue 3): the applier records a record as applied (set_state + fsync) right after the standby's final LMTP reply; a kill -9 inside that window re-applies it after restart (2 of 400 over 4 kills seen). Exactly-once needs a durable in-flight mark plus a duplicate check at the standby before re-applying"]
fn replica_kill_9_applies_each_message_exactly_once() {
    let _serial = serial();
    let report = replica_kill_9_scenario("rf-kill-once");
    let (_, duplicated) = exactly_once(&report.acked, &report.counts);
    assert!(
        duplicated.is_empty(),
        "{} of {} messages applied twice across {} kill -9 (head {}): {duplicated:?}",
        duplicated.len(),
        report.acked.len(),
        report.kills,
        report.head
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
// 4. Sync mode.
// ---------------------------------------------------------------------------------------
