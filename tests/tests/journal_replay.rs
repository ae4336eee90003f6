//! `levee journal replay` into a second real Postfix and Dovecot: the selected messages
//! arrive with their original envelope and bytes and are readable over IMAP; a recipient
//! the target refuses is reported with the server's reply; an unreachable target is a
//! clear error; run again with its report, a replay sends nothing twice.

use std::path::Path;
use std::process::Output;

use levee_proxy::mailstack::{StackSpec, free_port};
use levee_tests::clients::imap_fetch;
use levee_tests::{Site, contains, sample_message, start_stack_spec};
use serde_json::Value;

fn replay(config: &Path, report: &Path, target: &str, filters: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
        .args([
            "journal", "replay", "--json", "--rate", "50", "--to", target,
        ])
        .arg("--report")
        .arg(report)
        .arg("--config")
        .arg(config)
        .args(filters)
        .output()
        .unwrap()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {output:?}"))
}

#[test]
fn replay_delivers_reports_refusals_and_resumes() {
    let mut site = Site::start("replay-source");
    let for_alice = site.send_through_levee(&["r1@example.org"], "alice@example.test", "alice");
    site.send_through_levee(&["r2@example.org"], "bob@example.test", "bob");
    site.send_through_levee(&["r3@example.org"], "carol@example.test", "carol");
    site.levee.stop();
    let config = site.levee.config_path.clone();
    let report = site.dir.path().join("replay.jsonl");

    // Nobody listens there: a clear error, nothing reported as done.
    let closed = format!("smtp://127.0.0.1:{}", free_port().unwrap());
    let refused = replay(&config, &report, &closed, &[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = json_of(&refused);
    assert!(
        said["error"].as_str().unwrap().contains("cannot replay to"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap_or_default(), "");
    // A bad target or rate is a usage error.
    let bad = replay(&config, &report, "http://127.0.0.1:25", &[]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // A target with alice and bob only: carol's message is refused at RCPT.
    let mut spec = StackSpec::new("replay-target");
    spec.users.retain(|(user, _)| user != "carol");
    let (target, _scratch) = start_stack_spec(spec);
    let url = format!("smtp://{}", target.smtp_addr());
    let first = replay(&config, &report, &url, &[]);
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    let tally = json_of(&first);
    assert_eq!(
        (
            tally["delivered"].as_u64(),
            tally["refused"].as_u64(),
            tally["deferred"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{tally}"
    );
    let refusal = tally["refusals"][0].as_str().unwrap();
    assert!(
        refusal.contains("carol@example.test") && refusal.contains("55"),
        "{tally}"
    );

    // Readable over IMAP at the target, byte for byte after the headers it added.
    let wait = |user: &str, id: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let messages = imap_fetch(target.imap_addr(), user, &format!("{user}-pw"));
            if let Some(m) = messages.iter().find(|m| contains(m, id.as_bytes())) {
                return (m.clone(), messages.len());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never reached {user}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let (copy, count) = wait("alice", &for_alice[0]);
    let original = sample_message("r1@example.org", "alice@example.test");
    assert!(
        copy.ends_with(&original),
        "the replayed copy is not the original"
    );
    assert_eq!(count, 1);
    wait("bob", "r2@example.org");

    // Again with the same report: everything settled, nothing sent twice.
    let again = json_of(&replay(&config, &report, &url, &[]));
    assert_eq!(
        (again["already_done"].as_u64(), again["delivered"].as_u64()),
        (Some(3), Some(0)),
        "{again}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(imap_fetch(target.imap_addr(), "alice", "alice-pw").len(), 1);

    // A selection: only bob's, to a fresh report.
    let only_bob = site.dir.path().join("bob.jsonl");
    let selected = json_of(&replay(
        &config,
        &only_bob,
        &url,
        &["--rcpt", "bob@example.test"],
    ));
    assert_eq!(selected["delivered"], 1, "{selected}");
    let lines = std::fs::read_to_string(&only_bob).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
}
