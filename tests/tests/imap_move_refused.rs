//! A planned move the new site cannot take: after a failback the primary's Dovecot does
//! not answer (hung, or killed again at once). An IMAP session at the replica keeps its
//! connection there rather than being told BYE, its commands go on working under the
//! UIDs it knows, and it moves to the primary once that answers again.

use std::time::{Duration, Instant};

use levee_proxy::admin::Role;
use levee_tests::admin::{AdminSetup, Api};
use levee_tests::imap_load::{ImapClient, Reply, Security, is_error, show};
use levee_tests::{LeveeMode, ReplicaSite, Site, tail};

const MESSAGE_ID: &str = "move-refused-1@example.org";

/// The FETCH responses of a reply (news a move brings, such as EXISTS, left out).
fn fetched(reply: &Reply) -> String {
    reply
        .untagged
        .iter()
        .map(|r| show(r))
        .filter(|r| r.contains(" FETCH "))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn a_session_stays_where_it_is_when_the_new_site_does_not_answer() {
    let admin = AdminSetup::new(&[("ops", Role::Operator)]);
    let replica = ReplicaSite::start("refused-replica", LeveeMode::Child);
    // Probes too rare to notice the hang, and no automatic transition after the admin's:
    // the primary stays active while its Dovecot does not answer.
    let extra = replica.primary_extra(&format!(
        "\n[failover]\nprobe_interval = \"30s\"\nprobe_timeout = \"1s\"\nfailures = 3\nhold_down = \"5m\"\n{}",
        admin.section("drain_timeout = \"10s\"")
    ));
    let mut primary = Site::start_with("refused-primary", LeveeMode::Child, &extra);
    let sent = primary.send_through_levee(&[MESSAGE_ID], "alice@example.test", "alice");
    replica.wait_for_messages("alice", &sent, 20);

    let api = Api {
        port: admin.port,
        ca: primary.cert_path(),
        token: admin.tokens[0].clone(),
    };
    let log = || tail(&primary.levee.log(), 40);
    let tls = Security::tls(&primary.cert_path()).expect("the site's CA");
    let addr = primary.levee.ports.imaps;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let password = primary.password("alice");
    let fetch = "UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])";
    let mut client = rt.block_on(async {
        let mut client = ImapClient::connect(addr, &tls).await.expect("connect");
        client.login("alice", &password).await.expect("LOGIN");
        client.select("INBOX").await.expect("SELECT");
        client
    });
    let before = rt
        .block_on(client.ok(fetch))
        .expect("UID FETCH at the primary");

    let moved = |site: &Site| {
        site.levee
            .metric("levee_imap_migrations_total")
            .unwrap_or(0.0)
    };
    let switched = api.call(
        "POST",
        "/v1/switchover",
        Some(r#"{"to": "replica", "reason": "drill"}"#),
    );
    assert_eq!(switched["status"], 200, "{switched}");
    primary.wait_metric("levee_imap_migrations_total", 1.0);

    // The primary's Dovecot hangs; the failback goes through (its MTA takes mail).
    primary.stack.freeze_dovecot().expect("SIGSTOP Dovecot");
    let back = api.call(
        "POST",
        "/v1/failback",
        Some(r#"{"reason": "primary repaired"}"#),
    );
    assert_eq!(back["status"], 200, "{back}");
    // The session tries to move, and cannot within `[imap] connect_timeout` (2 s here).
    std::thread::sleep(Duration::from_secs(3));
    let at_replica = rt.block_on(client.command(fetch)).unwrap_or_else(|e| {
        panic!(
            "the session was dropped when the primary did not answer: {e}\n{}",
            log()
        )
    });
    assert!(at_replica.is_ok(), "{}\n{}", at_replica.status, log());
    let seen = at_replica.text();
    assert!(
        !at_replica.untagged.iter().any(|r| is_error(r)),
        "the client was told: {seen}"
    );
    assert!(fetched(&before).contains(MESSAGE_ID), "{}", before.text());
    assert_eq!(
        fetched(&at_replica),
        fetched(&before),
        "the session at the replica answers under other UIDs"
    );
    assert_eq!(
        moved(&primary),
        1.0,
        "the session moved to a primary that does not answer\n{}",
        log()
    );

    // The primary answers again: the session's next commands find it there.
    primary.stack.thaw_dovecot().expect("SIGCONT Dovecot");
    let deadline = Instant::now() + Duration::from_secs(30);
    while moved(&primary) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the session never moved back to the primary\n{}",
            log()
        );
        let noop = rt.block_on(client.command("NOOP")).expect("NOOP");
        assert!(noop.is_ok(), "NOOP: {}", noop.status);
        std::thread::sleep(Duration::from_millis(300));
    }
    let home = rt
        .block_on(client.ok(fetch))
        .expect("UID FETCH at the primary again");
    assert_eq!(fetched(&home), fetched(&before));
    assert_eq!(
        api.active_backend(),
        "primary",
        "levee failed over meanwhile"
    );
}
