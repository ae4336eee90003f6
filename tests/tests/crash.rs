//! `kill -9` of levee under concurrent load: every message whose sender saw 250 is in the
//! journal after restart, is delivered, and the hash chain verifies.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use levee_journal::RecordKind;
use levee_tests::{LeveeMode, Site};

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let mut site = Site::start_with("crash", LeveeMode::Child, "");
    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..3 {
        let mut load = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/smtp_load.py"))
            .args(["--port", &site.levee.ports.relay.port().to_string()])
            .args(["--threads", "8", "--count", "400", "--seconds", "20"])
            .args([
                "--to",
                "alice@example.test",
                "--prefix",
                &format!("crash{round}"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = load.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let some traffic through, then kill levee in the middle of it.
        let kill_after = 40 + round * 35;
        let mut round_acks = 0;
        let started = Instant::now();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.to_string());
                round_acks += 1;
                if round_acks == kill_after {
                    site.levee.kill();
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(60), "load stalled");
        }
        assert_eq!(round_acks, kill_after, "load ended before the kill point");
        // Collect what the client still reports (acks that raced the kill count too).
        for line in lines {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.to_string());
            }
        }
        load.wait().unwrap();
        site.levee.restart();
    }

    // Every acknowledged message reaches the mailbox (delivered inline or from the journal).
    let needles: Vec<String> = acked.iter().cloned().collect();
    site.wait_for_messages("alice", &needles, 60);
    site.levee.stop();

    let journal = site.open_journal();
    let report = journal.verify().unwrap();
    assert!(
        report.first_broken.is_none(),
        "hash chain broken: {report:?}"
    );
    let mut journaled = HashSet::new();
    for record in journal.read_from(1, usize::MAX).unwrap() {
        if let RecordKind::Message(message) = record.kind {
            journaled.insert(message.message_id.unwrap_or_default());
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !journaled.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not journaled: {missing:?}"
    );
    assert!(acked.len() >= 150, "too little load: {}", acked.len());
    eprintln!(
        "crash test: {} acknowledged, {} journaled, all acknowledged delivered",
        acked.len(),
        journaled.len()
    );
}
