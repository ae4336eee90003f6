//! Sync replication end to end: a 250 means the replica has the message durably; a frozen
//! replica holds the 250 for `sync_timeout`, then levee degrades to async and restores sync
//! once the replica has caught up. And what `/status` and `/metrics` show across outages.

mod replication_common;

use replication_common::*;

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
