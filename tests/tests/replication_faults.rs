//! Replication under faults, end to end with real Postfix and Dovecot at both sites: the
//! replica daemon stopped or `kill -9`ed under load, the primary `kill -9`ed mid-stream, sync
//! mode holding 250s for the replica and degrading when it freezes, and what `/status` and
//! `/metrics` show meanwhile.
//!
//! Every acknowledged message is tracked by its Message-ID (smtp_load.py prints
//! `ACK <message-id>` the moment it hears 250) and counted in the replica's Maildir and
//! journal. The tests run one at a time (they time 250s and kill daemons on a small machine).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use levee_journal::{Journal, Record, RecordKind};
use levee_proxy::mailstack::MailStack;
use levee_tests::{Levee, LeveeMode, ReplicaSite, Site, send_sample, tail};
use serde_json::Value;

const RCPT: &str = "alice@example.test";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LoadOutcome {
    acked: Vec<String>,
    errors: usize,
}

/// Runs smtp_load.py against `port` (`threads` × `count` messages to alice). `on_ack(n)` runs
/// after the n-th acknowledgement (1-based) and may stop, kill or restart daemons meanwhile.
fn load(
    port: u16,
    prefix: &str,
    threads: u32,
    count: u32,
    mut on_ack: impl FnMut(usize),
) -> LoadOutcome {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/smtp_load.py"))
        .args(["--port", &port.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--count", &count.to_string(), "--seconds", "60"])
        .args(["--to", RCPT, "--prefix", prefix])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().expect("stdout");
    let mut outcome = LoadOutcome::default();
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("load output");
        if let Some(id) = line.strip_prefix("ACK ") {
            outcome.acked.push(id.to_string());
            on_ack(outcome.acked.len());
        } else if line.starts_with("ERR ") {
            outcome.errors += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "load stalled");
    }
    let status = child.wait().expect("load exit");
    assert!(status.success(), "smtp_load.py failed: {status}");
    outcome
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `secs` with `what`
/// and the `context` it computes then.
fn wait_until<T>(
    secs: u64,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {secs} s\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {value}"))
}

/// Both daemons' `/status` and log tails, for failure messages.
fn describe(primary: &Levee, replica: &Levee) -> String {
    let status = |levee: &Levee| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| levee.status().to_string()))
            .unwrap_or_else(|_| "(no /status)".into())
    };
    format!(
        "primary /status: {}\nreplica /status: {}\nprimary log tail:\n{}\nreplica log tail:\n{}",
        status(primary),
        status(replica),
        tail(&primary.log(), 15),
        tail(&replica.log(), 15)
    )
}

/// Waits until the replica holds and has applied everything the primary journaled, and the
/// primary has seen the replica's ack for it; returns that head.
fn wait_caught_up(primary: &Levee, replica: &Levee, secs: u64) -> u64 {
    wait_until(
        secs,
        "replica caught up with the primary",
        || {
            let p = primary.status();
            let r = replica.status();
            let head = u64_at(&p, "/journal_head");
            let done = head > 0
                && u64_at(&p, "/replication/acked_seq") == head
                && u64_at(&r, "/durable_seq") == head
                && u64_at(&r, "/applied_seq") == head;
            done.then_some(head)
        },
        || describe(primary, replica),
    )
}

fn wait_connected(primary: &Levee, replica: &Levee, connected: bool, secs: u64) {
    wait_until(
        secs,
        &format!("primary reports replication.connected = {connected}"),
        || (primary.status()["replication"]["connected"] == connected).then_some(()),
        || describe(primary, replica),
    );
}

/// The Message-ID of a stored message (the first `Message-ID: <…>` header).
fn message_id(message: &[u8]) -> Option<String> {
    let needle = b"message-id: <";
    let start = message
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))?
        + needle.len();
    let end = start + message[start..].iter().position(|&b| b == b'>')?;
    Some(String::from_utf8_lossy(&message[start..end]).into_owned())
}

/// How many times each Message-ID is in `user`'s INBOX.
fn inbox_counts(stack: &MailStack, user: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in stack.inbox_messages(user).expect("read maildir") {
        let id = message_id(&message).unwrap_or_else(|| "<no Message-ID>".into());
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

fn message_ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Message(m) => Some(m.message_id.clone().unwrap_or_default()),
            _ => None,
        })
        .collect()
}

/// The replica journal is the primary's, record for record: same head, no gap, same chain,
/// and both verify. Returns the records.
fn assert_same_journal(source: &Journal, copy: &Journal) -> Vec<Record> {
    let theirs = source
        .read_from(1, usize::MAX)
        .expect("read primary journal");
    let ours = copy.read_from(1, usize::MAX).expect("read replica journal");
    assert_eq!(copy.head(), source.head(), "replica head != primary head");
    assert_eq!(copy.last_chain(), source.last_chain(), "chain ends differ");
    assert_eq!(ours.len() as u64, copy.head(), "replica journal has a gap");
    for (i, (a, b)) in theirs.iter().zip(ours.iter()).enumerate() {
        assert_eq!(b.seq, i as u64 + 1, "replica journal is not 1..=head");
        assert_eq!(a, b, "replica record {} differs from the primary's", a.seq);
    }
    let report = source.verify().expect("verify primary");
    assert!(report.first_broken.is_none(), "primary chain: {report:?}");
    let report = copy.verify().expect("verify replica");
    assert!(report.first_broken.is_none(), "replica chain: {report:?}");
    ours
}

/// IDs not exactly once in `counts`: (missing, duplicated with their count).
fn exactly_once(ids: &[String], counts: &HashMap<String, usize>) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    for id in ids {
        match counts.get(id).copied().unwrap_or(0) {
            0 => missing.push(id.clone()),
            1 => {}
            n => duplicated.push(format!("{id} ×{n}")),
        }
    }
    duplicated.sort();
    (missing, duplicated)
}

/// Sends one sample message and times it (python start-up included).
fn timed_send(site: &Site, id: &str) -> (Value, Duration) {
    let started = Instant::now();
    let verdict = send_sample(site.dir.path(), site.levee.ports.relay, id, RCPT);
    (verdict, started.elapsed())
}

// ---------------------------------------------------------------------------------------
// 1. The replica daemon stopped under load, then restarted.
// ---------------------------------------------------------------------------------------

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

const SYNC_TIMEOUT: Duration = Duration::from_millis(1500);

/// (a) A 250 in sync mode means the replica journal has the message: right after each 250
/// the primary is `kill -9`ed and the replica's journal is read. In the middle round the
/// replica is frozen while the message is sent: the 250 must wait for it.
#[test]
fn sync_mode_250_means_durable_at_the_replica() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-sync-a-r", LeveeMode::Child);
    let mut primary = Site::start_with(
        "rf-sync-a-p",
        LeveeMode::Child,
        &replica.link.primary_section("sync", "1500ms"),
    );
    for round in 0..3 {
        wait_connected(&primary.levee, &replica.daemon, true, 10);
        let id = format!("sync-durable-{round}@example.org");
        let held = round == 1;
        if held {
            replica.daemon.pause();
        }
        let (dir, relay) = (primary.dir.path().to_path_buf(), primary.levee.ports.relay);
        let sender = {
            let id = id.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let verdict = send_sample(&dir, relay, &id, RCPT);
                (verdict, started.elapsed())
            })
        };
        if held {
            std::thread::sleep(Duration::from_millis(600));
            let early = sender.is_finished();
            replica.daemon.resume();
            assert!(
                !early,
                "round {round}: the 250 came while the replica was frozen (sync mode did not wait)"
            );
        }
        let (verdict, elapsed) = sender.join().expect("sender thread");
        assert_eq!(verdict["code"], 250, "round {round}: {verdict}");
        // Not a degraded (timed-out) 250: that would take at least sync_timeout.
        assert!(
            elapsed < SYNC_TIMEOUT - Duration::from_millis(100),
            "round {round}: 250 after {elapsed:?}, i.e. the sync wait timed out\n{}",
            describe(&primary.levee, &replica.daemon)
        );
        primary.levee.kill();
        replica.daemon.stop();
        {
            let journal = replica.open_journal();
            let ids = message_ids(&journal.read_from(1, usize::MAX).unwrap());
            assert!(
                ids.contains(&id),
                "round {round}: {id} acknowledged in sync mode but not in the replica journal (has {ids:?})"
            );
        }
        replica.daemon.restart();
        primary.levee.restart();
    }
}

/// (b) A frozen replica holds a 250 for sync_timeout, then levee degrades to async (fast
/// 250s, `/status` and the metric say so) and returns to sync once the replica caught up.
#[test]
fn sync_mode_degrades_when_replica_freezes_and_recovers() {
    let _serial = serial();
    let replica = ReplicaSite::start("rf-sync-b-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-sync-b-p",
        LeveeMode::Child,
        &replica.link.primary_section("sync", "1500ms"),
    );
    let (p, r) = (&primary.levee, &replica.daemon);
    wait_connected(p, r, true, 10);
    let degraded = || p.status()["replication"]["sync_degraded"].clone();

    let (verdict, elapsed) = timed_send(&primary, "sync-b-0@example.org");
    assert_eq!(verdict["code"], 250, "{verdict}");
    assert!(
        elapsed < Duration::from_millis(1200),
        "healthy sync 250 took {elapsed:?}"
    );
    assert_eq!(degraded(), false);

    r.pause();
    let (verdict, held) = timed_send(&primary, "sync-b-1@example.org");
    assert_eq!(
        verdict["code"], 250,
        "degraded sync mode must still accept: {verdict}"
    );
    assert!(
        held >= Duration::from_millis(1200),
        "frozen replica, yet the 250 came after only {held:?}"
    );
    assert!(
        held < Duration::from_secs(5),
        "250 held {held:?}, far beyond sync_timeout"
    );
    assert_eq!(degraded(), true, "{}", p.status());
    assert_eq!(p.metric("levee_replication_sync_degraded"), Some(1.0));
    assert!(
        p.metric("levee_replication_sync_timeouts_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    let mut fast = Vec::new();
    for i in 2..4 {
        let (verdict, elapsed) = timed_send(&primary, &format!("sync-b-{i}@example.org"));
        assert_eq!(verdict["code"], 250, "{verdict}");
        fast.push(elapsed);
    }
    assert!(
        fast.iter().all(|e| *e < Duration::from_millis(1000)),
        "degraded (async) 250s should not wait for the frozen replica: {fast:?}"
    );
    assert_eq!(degraded(), true);

    r.resume();
    let head = u64_at(&p.status(), "/journal_head");
    wait_until(
        20,
        "primary sees the resumed replica's ack for its head",
        || (u64_at(&p.status(), "/replication/acked_seq") >= head).then_some(()),
        || describe(p, r),
    );
    let (verdict, elapsed) = timed_send(&primary, "sync-b-4@example.org");
    assert_eq!(verdict["code"], 250, "{verdict}");
    assert!(
        elapsed < Duration::from_millis(1200),
        "restored sync 250 took {elapsed:?}"
    );
    assert_eq!(degraded(), false, "sync not restored: {}", p.status());
    assert_eq!(p.metric("levee_replication_sync_degraded"), Some(0.0));

    wait_caught_up(p, r, 30);
    let ids: Vec<String> = (0..5).map(|i| format!("sync-b-{i}@example.org")).collect();
    let counts = inbox_counts(&replica.stack, "alice");
    let (missing, duplicated) = exactly_once(&ids, &counts);
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "{missing:?} {duplicated:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Visibility: /status and /metrics at both ends.
// ---------------------------------------------------------------------------------------

#[test]
fn status_and_metrics_show_link_lag_and_replica_progress() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-vis-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-vis-p",
        LeveeMode::Child,
        &replica.link.primary_section("async", "2s"),
    );
    for i in 0..3 {
        let (verdict, _) = timed_send(&primary, &format!("vis-{i}@example.org"));
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    let head = wait_caught_up(&primary.levee, &replica.daemon, 30);
    assert!(head >= 3);

    let p = primary.levee.status();
    assert_eq!(p["role"], "primary", "{p}");
    assert_eq!(u64_at(&p, "/journal_head"), head);
    let link = &p["replication"];
    assert_eq!(link["mode"], "async", "{p}");
    assert_eq!(link["connected"], true, "{p}");
    assert_eq!(u64_at(&p, "/replication/acked_seq"), head);
    assert_eq!(u64_at(&p, "/replication/lag_records"), 0);
    assert_eq!(link["lag_seconds"].as_f64(), Some(0.0), "{p}");
    assert_eq!(link["sync_degraded"], false, "{p}");

    let r = replica.daemon.status();
    assert_eq!(r["role"], "replica", "{r}");
    assert_eq!(u64_at(&r, "/durable_seq"), head);
    assert_eq!(u64_at(&r, "/applied_seq"), head);
    assert_eq!(u64_at(&r, "/apply_pending"), 0);

    assert_eq!(
        primary.levee.metric("levee_replication_acked_seq"),
        Some(head as f64)
    );
    assert_eq!(
        primary.levee.metric("levee_replication_connected"),
        Some(1.0)
    );
    assert_eq!(
        replica.daemon.metric("levee_replica_durable_seq"),
        Some(head as f64)
    );
    assert_eq!(
        replica.daemon.metric("levee_replica_applied_seq"),
        Some(head as f64)
    );

    // The replica goes away: the link is down and the lag is what was journaled since.
    replica.daemon.stop();
    wait_connected(&primary.levee, &replica.daemon, false, 5);
    for i in 3..5 {
        let (verdict, _) = timed_send(&primary, &format!("vis-{i}@example.org"));
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    std::thread::sleep(Duration::from_millis(1200));
    let p = primary.levee.status();
    assert_eq!(p["replication"]["connected"], false, "{p}");
    assert_eq!(u64_at(&p, "/replication/acked_seq"), head, "{p}");
    assert_eq!(u64_at(&p, "/replication/lag_records"), 2, "{p}");
    let lag = p["replication"]["lag_seconds"].as_f64().unwrap_or(-1.0);
    assert!(
        lag >= 1.0,
        "lag_seconds {lag} while 2 records wait >1 s: {p}"
    );
    assert!(p["replication"]["last_error"].is_string(), "{p}");
    assert_eq!(
        primary.levee.metric("levee_replication_connected"),
        Some(0.0)
    );

    // Back: caught up, lag gone.
    replica.daemon.restart();
    let head = wait_caught_up(&primary.levee, &replica.daemon, 30);
    let p = primary.levee.status();
    assert_eq!(p["replication"]["connected"], true, "{p}");
    assert_eq!(u64_at(&p, "/replication/lag_records"), 0);
    assert_eq!(p["replication"]["lag_seconds"].as_f64(), Some(0.0), "{p}");
    assert_eq!(u64_at(&replica.daemon.status(), "/durable_seq"), head);
}

/// The lag gauges must move while the replica is unreachable (that is when an alert on
/// `levee_replication_lag_seconds` matters), and the position gauges must be right after a
/// restart, not only after the next record.
#[test]
fn replication_metrics_stay_current_across_outage_and_restart() {
    let _serial = serial();
    let mut replica = ReplicaSite::start("rf-met-r", LeveeMode::Child);
    let mut primary = Site::start_with(
        "rf-met-p",
        LeveeMode::Child,
        &replica.link.primary_section("async", "2s"),
    );
    for i in 0..3 {
        let (verdict, _) = timed_send(&primary, &format!("met-{i}@example.org"));
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    wait_caught_up(&primary.levee, &replica.daemon, 30);
    let mut problems = Vec::new();

    replica.daemon.stop();
    wait_connected(&primary.levee, &replica.daemon, false, 5);
    for i in 3..5 {
        let (verdict, _) = timed_send(&primary, &format!("met-{i}@example.org"));
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let lag_records = primary.levee.metric("levee_replication_lag_records");
    let lag_seconds = primary.levee.metric("levee_replication_lag_seconds");
    if lag_records != Some(2.0) {
        problems.push(format!(
            "replica down, 2 records waiting: levee_replication_lag_records = {lag_records:?}"
        ));
    }
    if !lag_seconds.is_some_and(|s| s >= 1.0) {
        problems.push(format!(
            "replica down, oldest record waiting 1.5 s: levee_replication_lag_seconds = {lag_seconds:?}"
        ));
    }

    replica.daemon.restart();
    let head = wait_caught_up(&primary.levee, &replica.daemon, 30);
    // Both restart with nothing new to stream.
    primary.levee.stop();
    replica.daemon.stop();
    replica.daemon.restart();
    primary.levee.restart();
    wait_caught_up(&primary.levee, &replica.daemon, 30);
    std::thread::sleep(Duration::from_millis(500));
    for (levee, name) in [
        (&primary.levee, "levee_replication_acked_seq"),
        (&replica.daemon, "levee_replica_durable_seq"),
        (&replica.daemon, "levee_replica_applied_seq"),
    ] {
        let value = levee.metric(name);
        if value != Some(head as f64) {
            problems.push(format!(
                "after a restart, caught up at {head}: {name} = {value:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A replica that stops answering but keeps its TCP connection (frozen process, hung host)
/// must be dropped after 5 silent heartbeats, so `/status` stops claiming it is connected.
#[test]
fn frozen_replica_is_dropped_after_silence() {
    let _serial = serial();
    let replica = ReplicaSite::start("rf-frozen-r", LeveeMode::Child);
    let primary = Site::start_with(
        "rf-frozen-p",
        LeveeMode::Child,
        &replica.link.primary_section("async", "2s"),
    );
    let (p, r) = (&primary.levee, &replica.daemon);
    wait_connected(p, r, true, 10);
    r.pause();
    // heartbeat = 200 ms: silent for 5 heartbeats (1 s) means dropped; give it 4 s.
    let dropped = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        p.status()["replication"]["connected"] == false
    });
    let status = p.status();
    r.resume();
    assert!(
        dropped,
        "replica frozen for 4 s, primary still says connected: {status}"
    );
    // And it comes back.
    let (verdict, _) = timed_send(&primary, "frozen-after@example.org");
    assert_eq!(verdict["code"], 250, "{verdict}");
    wait_caught_up(p, r, 30);
}
