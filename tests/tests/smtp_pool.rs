//! Upstream sessions handed from one client session to the next (taken over with
//! XCLIENT): each client still reaches Postfix as itself, an authenticated upstream session
//! is never handed on, and an upstream restart costs the next client nothing.

use levee_tests::clients::{Security, smtp_send, smtp_send_as};
use levee_tests::{LeveeMode, Site, contains, message_file, sample_message};

const REUSED: &str = "levee_upstream_reused_total";

// levee runs as a child process here: metrics are per process, and these tests count.

#[test]
fn pooled_upstream_sessions_carry_each_clients_identity() {
    let site = Site::start_with("pool-identity", LeveeMode::Child, "");
    let mut sent = Vec::new();
    for i in 0..6 {
        let id = format!("pool-{i}@example.org");
        let body = sample_message(&id, "alice@example.test");
        let file = message_file(site.dir.path(), &format!("m{i}.eml"), &body);
        let verdict = smtp_send_as(
            &format!("client{i}.test"),
            site.levee.ports.relay,
            Security::Plain,
            None,
            "bob@example.org",
            &["alice@example.test"],
            &file,
        );
        assert_eq!(verdict["code"], 250, "message {i}: {verdict}");
        sent.push((id, body));
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    site.wait_for_messages("alice", &ids, 20);

    let reused = site.levee.metric(REUSED).unwrap_or(0.0);
    assert!(
        reused >= 4.0,
        "six clients one after another should mostly share upstream sessions; {reused} reused"
    );
    let fetched = site.imap_messages("alice");
    assert_eq!(fetched.len(), sent.len());
    for (i, (id, body)) in sent.iter().enumerate() {
        let copy = fetched
            .iter()
            .find(|m| contains(m, id.as_bytes()))
            .unwrap_or_else(|| panic!("{id} missing"));
        assert!(copy.ends_with(body), "{id}: client bytes changed");
        // Postfix's own Received header names the EHLO of the client that sent this
        // message, not of an earlier client on the same upstream connection (matched in
        // Postfix's form: levee's own trace header names the client too).
        let helo = format!("from client{i}.test (unknown [");
        assert!(
            contains(copy, helo.as_bytes()),
            "{id} does not carry its own client's identity:\n{}",
            String::from_utf8_lossy(&copy[..copy.len().min(600)])
        );
    }
}

#[test]
fn an_authenticated_upstream_session_is_never_handed_on() {
    let site = Site::start_with("pool-auth", LeveeMode::Child, "");
    let submission = site.levee.ports.submission;
    let password = site.password("alice");
    let body = sample_message("pool-auth@example.org", "bob@example.test");
    let file = message_file(site.dir.path(), "m.eml", &body);
    for round in 0..3 {
        let good = smtp_send(
            submission,
            Security::StartTls,
            Some(("alice", &password)),
            "alice@example.test",
            &["bob@example.test"],
            &file,
        );
        assert_eq!(good["code"], 250, "round {round}: {good}");
        // Straight after an authenticated session ended: no AUTH, foreign recipient.
        for port in [submission, site.levee.ports.relay] {
            let relay = smtp_send(
                port,
                Security::StartTls,
                None,
                "spammer@foreign.example",
                &["victim@elsewhere.example"],
                &file,
            );
            assert!(
                !relay["ok"].as_bool().unwrap(),
                "round {round}: relayed without AUTH on {port}: {relay}"
            );
        }
    }
    site.wait_for_messages("bob", &["pool-auth@example.org".into()], 15);
    // Postfix itself forgets the login on XCLIENT, but levee does not rely on that: an
    // upstream session that saw AUTH, or that refused anything, is closed, never handed on.
    let reused = site.levee.metric(REUSED).unwrap_or(0.0);
    assert_eq!(
        reused, 0.0,
        "an authenticated or refused session was reused"
    );
}

#[test]
fn an_upstream_restart_costs_the_next_client_nothing() {
    let mut site = Site::start_with("pool-restart", LeveeMode::Child, "");
    let relay = site.levee.ports.relay;
    let send = |site: &Site, id: &str| {
        let body = sample_message(id, "alice@example.test");
        let file = message_file(site.dir.path(), &format!("{id}.eml"), &body);
        smtp_send(
            relay,
            Security::Plain,
            None,
            "bob@example.org",
            &["alice@example.test"],
            &file,
        )
    };
    let first = send(&site, "before-restart@example.org");
    assert_eq!(first["code"], 250, "{first}");
    site.wait_for_messages("alice", &["before-restart@example.org".into()], 15);

    // Postfix goes away and comes back while levee holds an idle session to it.
    site.stack.stop_postfix().expect("stop postfix");
    site.stack.start_postfix().expect("start postfix");

    let second = send(&site, "after-restart@example.org");
    assert_eq!(second["code"], 250, "{second}");
    let fetched = site.wait_for_messages(
        "alice",
        &[
            "before-restart@example.org".into(),
            "after-restart@example.org".into(),
        ],
        20,
    );
    assert_eq!(fetched.len(), 2, "each message exactly once");
    // The dead pooled session was noticed and replaced within the client's session: the
    // message went through the upstream in lockstep, not by store and forward.
    let failures = site
        .levee
        .metric("levee_upstream_failures_total")
        .unwrap_or(0.0);
    assert_eq!(failures, 0.0, "a client session lost its upstream");
    site.levee.stop();
    let records = site.journal_records();
    assert_eq!(records.len(), 2);
}
