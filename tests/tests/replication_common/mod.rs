//! Shared by the replication fault tests: load with acknowledged Message-IDs, waits on
//! both daemons' `/status`, journal and mailbox comparisons.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

pub use std::collections::{HashMap, HashSet};
pub use std::io::{BufRead, BufReader};
pub use std::process::{Command, Stdio};
pub use std::sync::{Mutex, MutexGuard};
pub use std::time::{Duration, Instant};

pub use levee_journal::{DeliveryState, Journal, Record, RecordKind};
pub use levee_proxy::mailstack::MailStack;
pub use levee_tests::pair::{describe, wait_caught_up};
pub use levee_tests::tally::{
    exactly_once, inbox_counts, maildir_file, message_id, message_ids, u64_at, wait_until,
};
pub use levee_tests::{Levee, LeveeMode, ReplicaSite, Site, send_sample, tail};
pub use serde_json::Value;

pub const RCPT: &str = "alice@example.test";

pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub acked: Vec<String>,
    pub errors: usize,
}

/// Runs smtp_load.py against `port` (`threads` × `count` messages to alice). `on_ack(n)` runs
/// after the n-th acknowledgement (1-based) and may stop, kill or restart daemons meanwhile.
pub fn load(
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

pub fn wait_connected(primary: &Levee, replica: &Levee, connected: bool, secs: u64) {
    wait_until(
        secs,
        &format!("primary reports replication.connected = {connected}"),
        || (primary.status()["replication"]["connected"] == connected).then_some(()),
        || describe(primary, replica),
    );
}

/// The replica journal is the primary's, record for record: same head, no gap, same chain,
/// and both verify. Returns the records.
pub fn assert_same_journal(source: &Journal, copy: &Journal) -> Vec<Record> {
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

/// Sends one sample message and times it (python start-up included).
pub fn timed_send(site: &Site, id: &str) -> (Value, Duration) {
    let started = Instant::now();
    let verdict = send_sample(site.dir.path(), site.levee.ports.relay, id, RCPT);
    (verdict, started.elapsed())
}

/// The seq of the message record with `message_id` in the replica's journal (stopped).
pub fn seq_of(replica: &ReplicaSite, message_id: &str) -> u64 {
    let records = replica
        .open_journal()
        .read_from(1, usize::MAX)
        .expect("read replica journal");
    records
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::Message(m) if m.message_id.as_deref() == Some(message_id)))
        .map(|r| r.seq)
        .unwrap_or_else(|| panic!("{message_id} is not in the replica journal"))
}

/// Makes record `seq` pending again in the replica's journal (the daemon must be stopped),
/// durably: what a `kill -9` between the standby's reply and the applier's flush leaves.
pub fn reset_to_pending(replica: &ReplicaSite, seq: u64) {
    let journal = replica.open_journal();
    journal
        .set_state(seq, &DeliveryState::pending(0))
        .expect("reset delivery state");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(journal.flush())
        .expect("flush replica journal");
}

/// The replica's `/status` applied_seq.
pub fn applied_seq(replica: &ReplicaSite) -> u64 {
    u64_at(&replica.daemon.status(), "/applied_seq")
}

/// Waits until the replica has applied everything up to `seq`.
pub fn wait_applied(replica: &ReplicaSite, seq: u64, secs: u64) {
    wait_until(
        secs,
        &format!("replica applied through {seq}"),
        || (applied_seq(replica) >= seq).then_some(()),
        || {
            format!(
                "replica /status: {}\nreplica log tail:\n{}",
                replica.daemon.status(),
                tail(&replica.daemon.log(), 15)
            )
        },
    );
}

/// Lines of the stack's Dovecot log (the whole file, not a tail).
pub fn dovecot_log_lines(stack: &MailStack) -> Vec<String> {
    std::fs::read_to_string(stack.dir().join("dovecot/dovecot.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
