//! A command in flight when the primary's Dovecot hangs and then dies: levee asks the
//! replica again for a read-only one (the client gets its answer, on its connection, under
//! the UIDs it knows), and answers a changing one with a tagged NO rather than risk
//! applying it twice. An IDLE the client ended with a DONE the dead server never answered
//! is completed at the replica, not entered again; one the dead server never said "+" to
//! is entered at the replica, and the client gets its "+" there. No client sees BYE, and
//! all go on working.

use std::time::Duration;

use levee_tests::imap_load::{ImapClient, Reply, Security};
use levee_tests::{LeveeMode, ReplicaSite, Site, tail};

const MESSAGE_ID: &str = "inflight-1@example.org";
const HEADER: &str = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]";

/// The UID of the only message in the reply to `UID FETCH 1:* (UID ...)`.
fn only_uid(reply: &Reply) -> u32 {
    let all = reply.text();
    let at = all.find("UID ").expect("a UID in the FETCH response") + 4;
    all[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .expect("a number after UID")
}

#[test]
fn commands_in_flight_when_the_primary_dies() {
    let replica = ReplicaSite::start("inflight-replica", LeveeMode::Child);
    let extra = replica.primary_extra(
        "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"300ms\"\nfailures = 3\nhold_down = \"5s\"\n",
    );
    let mut primary = Site::start_with("inflight-primary", LeveeMode::Child, &extra);
    let sent = primary.send_through_levee(&[MESSAGE_ID], "alice@example.test", "alice");
    replica.wait_for_messages("alice", &sent, 20);

    let password = primary.password("alice");
    let tls = Security::tls(&primary.cert_path()).expect("the site's CA");
    let addr = primary.levee.ports.imaps;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut reader, mut writer, mut idler, mut starter, uid) = rt.block_on(async {
        let open = async || {
            let mut client = ImapClient::connect(addr, &tls).await.expect("connect");
            client.login("alice", &password).await.expect("LOGIN");
            client.select("INBOX").await.expect("SELECT");
            client
        };
        let mut reader = open().await;
        let writer = open().await;
        let mut idler = open().await;
        idler.idle().await.expect("IDLE");
        let starter = open().await;
        let listed = reader
            .ok(&format!("UID FETCH 1:* (UID {HEADER})"))
            .await
            .expect("UID FETCH before the failure");
        assert!(listed.text().contains(MESSAGE_ID), "{}", listed.text());
        let uid = only_uid(&listed);
        (reader, writer, idler, starter, uid)
    });

    // A hung server: the commands and the DONE reach it and get no answer.
    primary.stack.freeze_dovecot().expect("SIGSTOP Dovecot");
    let (fetch, store, idle, start) = rt.block_on(async {
        let fetch = reader
            .send(&format!("UID FETCH {uid} (UID {HEADER})"))
            .await
            .expect("send UID FETCH");
        let store = writer
            .send(&format!("UID STORE {uid} +FLAGS (\\Flagged)"))
            .await
            .expect("send UID STORE");
        let idle = idler.send_done().await.expect("send DONE");
        let start = starter.send("IDLE").await.expect("send IDLE");
        tokio::time::sleep(Duration::from_millis(300)).await;
        (fetch, store, idle, start)
    });
    primary.stack.kill_dovecot().expect("kill Dovecot");

    let log = || tail(&primary.levee.log(), 40);
    rt.block_on(async {
        let fetched = reader.complete(&fetch, "UID FETCH").await.expect("reply");
        assert!(fetched.is_ok(), "UID FETCH: {}\n{}", fetched.status, log());
        let seen = fetched.text();
        assert!(
            seen.contains(MESSAGE_ID) && seen.contains(&format!("UID {uid} ")),
            "the re-issued UID FETCH answered something else: {seen}"
        );
        assert!(!seen.contains("BYE"), "{seen}");

        let stored = writer.complete(&store, "UID STORE").await.expect("reply");
        assert!(
            stored.status.starts_with("NO [UNAVAILABLE]"),
            "a STORE whose fate is unknown must be refused, not repeated: {}",
            stored.status
        );
        assert!(!stored.text().contains("BYE"), "{}", stored.text());

        let ended = idler.complete(&idle, "IDLE").await.unwrap_or_else(|e| {
            panic!(
                "the IDLE the client ended before the failover was never completed: {e}\n{}",
                log()
            )
        });
        assert!(ended.is_ok(), "IDLE: {}", ended.status);
        assert!(!ended.text().contains("BYE"), "{}", ended.text());

        starter.idle_go_ahead(start).await.unwrap_or_else(|e| {
            panic!(
                "the IDLE the dead server never said \"+\" to was left unanswered: {e}\n{}",
                log()
            )
        });
        let idled = starter.done().await.expect("DONE at the replica");
        assert!(idled.is_ok(), "IDLE: {}", idled.status);
        assert!(!idled.text().contains("BYE"), "{}", idled.text());

        // The sessions live on at the replica, under the same UIDs.
        for client in [&mut reader, &mut writer, &mut idler, &mut starter] {
            let again = client
                .ok(&format!("UID FETCH {uid} (UID FLAGS {HEADER})"))
                .await
                .unwrap_or_else(|e| panic!("after the failover: {e}\n{}", log()));
            let seen = again.text();
            assert!(seen.contains(MESSAGE_ID), "{seen}");
            assert!(
                !seen.contains("\\Flagged"),
                "the refused STORE was applied after all: {seen}"
            );
        }
    });
    let moved = primary
        .levee
        .metric("levee_imap_migrations_total")
        .unwrap_or(0.0);
    assert!(moved >= 3.0, "sessions moved: {moved}\n{}", log());
    let status = primary.levee.status();
    assert_eq!(
        status["failover"]["active"]["backend"], "replica",
        "{status}"
    );
}
