//! levee watches both sites' real mail servers and moves the active backend to the replica
//! when the primary's Dovecot dies; it does not move back by itself when it returns.

use std::time::{Duration, Instant};

use levee_tests::{LeveeMode, ReplicaSite, Site, tail};

fn wait_for(site: &Site, what: &str, secs: u64, probe: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let status = site.levee.status();
        if probe(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\nstatus: {status}\nlog:\n{}",
            tail(&site.levee.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn primary_imap_death_moves_the_active_backend_and_only_an_admin_moves_it_back() {
    let replica = ReplicaSite::start("failover-replica", LeveeMode::Child);
    let extra = format!(
        "\n[upstream.replica]\nsmtp = \"{}\"\nimap = \"{}\"\n\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"2s\"\n\n[alerts]\nto = [\"carol@example.test\"]\n",
        replica.stack.smtp_addr(),
        replica.stack.imap_addr()
    );
    let mut primary = Site::start_with("failover-primary", LeveeMode::Child, &extra);

    wait_for(&primary, "both sites healthy", 10, |s| {
        s["failover"]["health"]["primary_ok"] == true
            && s["failover"]["health"]["replica_ok"] == true
    });
    let status = primary.levee.status();
    assert_eq!(
        status["failover"]["active"]["backend"], "primary",
        "{status}"
    );
    assert_eq!(status["failover"]["active"]["epoch"], 1, "{status}");

    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    let killed = Instant::now();
    wait_for(&primary, "failover to the replica", 10, |s| {
        s["failover"]["active"]["backend"] == "replica"
    });
    eprintln!("active backend moved {:?} after the kill", killed.elapsed());
    let status = primary.levee.status();
    assert_eq!(status["failover"]["active"]["epoch"], 2, "{status}");
    let error = status["failover"]["health"]["primary_error"]
        .as_str()
        .unwrap_or("");
    assert!(
        error.starts_with("IMAP"),
        "the failing service is named: {status}"
    );
    assert_eq!(primary.levee.metric("levee_active_backend"), Some(1.0));
    // The admins hear of it by mail, through the site now active: what, why, how long.
    let subject =
        "Subject: levee: clients moved from the primary site to the replica site (epoch 2)";
    let report = replica
        .wait_for_messages("carol", &[subject.into()], 30)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .find(|m| m.contains(subject))
        .expect("the report");
    for want in [
        "from the primary's first failed health check to the switch",
        "Why: Primary -> Replica (epoch 2): PrimaryFailed",
        "Primary health: failing (IMAP",
        "What to do next: Clients now use the replica site",
    ] {
        assert!(
            report.contains(want),
            "{want:?} missing from the report:\n{report}"
        );
    }
    assert_eq!(
        primary.levee.metric("levee_failover_transitions_total"),
        Some(1.0)
    );

    // The primary comes back: levee stays on the replica (failback is an admin's call).
    primary
        .stack
        .start_dovecot()
        .expect("restart the primary's Dovecot");
    wait_for(&primary, "primary healthy again", 10, |s| {
        s["failover"]["health"]["primary_ok"] == true
    });
    std::thread::sleep(Duration::from_secs(3));
    let status = primary.levee.status();
    assert_eq!(
        status["failover"]["active"]["backend"], "replica",
        "{status}"
    );
    assert_eq!(status["failover"]["active"]["epoch"], 2, "{status}");

    // A restart keeps the epoch and the active site: sessions do not go back to a primary
    // that was left, and the transition is in the journal.
    primary.levee.stop();
    let audits: Vec<String> = primary
        .open_journal()
        .read_from(1, usize::MAX)
        .expect("read journal")
        .into_iter()
        .filter_map(|r| match r.kind {
            levee_journal::RecordKind::Audit(a) => Some(format!("{} {}", a.action, a.detail)),
            _ => None,
        })
        .collect();
    assert!(
        audits
            .iter()
            .any(|a| a.starts_with("failover Primary -> Replica, epoch 2")),
        "{audits:?}"
    );
    primary.levee.restart();
    wait_for(&primary, "levee back", 10, |s| s["failover"].is_object());
    let status = primary.levee.status();
    assert_eq!(status["failover"]["active"]["epoch"], 2, "{status}");
    assert_eq!(
        status["failover"]["active"]["backend"], "replica",
        "{status}"
    );
}
