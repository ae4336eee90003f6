//! A message through levee reaches the real Dovecot INBOX unchanged and is journaled
//! byte-identical with its envelope and hash; AUTH and relay policy stay the mail server's.

use levee_journal::{DeliveryStatus, RecordKind};
use levee_tests::clients::{Security, smtp_send};
use levee_tests::{Site, contains, message_file, sample_message};
use sha2::{Digest, Sha256};

#[test]
fn message_arrives_byte_identical_and_is_journaled() {
    let mut site = Site::start("delivery");
    let sent = sample_message("e2e-1@example.org", "alice@example.test");
    let file = message_file(site.dir.path(), "m1.eml", &sent);
    let verdict = smtp_send(
        site.levee.ports.relay,
        Security::Plain,
        None,
        "bob@example.org",
        &["alice@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    assert!(verdict["ok"].as_bool().unwrap(), "{verdict}");

    site.wait_for_messages("alice", &["e2e-1@example.org".into()], 15);
    let fetched = site.imap_messages("alice");
    assert_eq!(fetched.len(), 1, "exactly one message in INBOX");
    // Dovecot and Postfix prepend trace headers; everything the client sent follows intact.
    assert!(
        fetched[0].ends_with(&sent),
        "INBOX copy differs from what the client sent:\n{}",
        String::from_utf8_lossy(&fetched[0])
    );

    site.levee.stop();
    let journal = site.open_journal();
    let records = journal.read_from(1, 100).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let RecordKind::Message(message) = &record.kind else {
        panic!("not a message record: {record:?}");
    };
    assert_eq!(
        message.body, sent,
        "journal body differs from what the client sent"
    );
    assert_eq!(message.mail_from, "bob@example.org");
    assert_eq!(message.rcpt_to, vec!["alice@example.test".to_string()]);
    assert_eq!(message.message_id.as_deref(), Some("e2e-1@example.org"));
    assert_eq!(
        record.body_sha256.as_slice(),
        Sha256::digest(&sent).as_slice()
    );
    assert!(
        message
            .client
            .addr
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        journal.state(record.seq).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
    assert!(journal.verify().unwrap().first_broken.is_none());
    assert_eq!(
        journal.by_message_id("e2e-1@example.org").unwrap(),
        vec![record.seq]
    );
}

#[test]
fn auth_is_the_mail_servers_and_levee_is_no_open_relay() {
    let mut site = Site::start("auth");
    let body = sample_message("auth-1@example.org", "someone@foreign.example");
    let file = message_file(site.dir.path(), "m.eml", &body);
    let submission = site.levee.ports.submission;
    let password = site.password("alice");

    // Good password over STARTTLS: accepted, and relaying out is allowed for alice.
    let good = smtp_send(
        submission,
        Security::StartTls,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    assert_eq!(good["code"], 250, "{good}");

    // Implicit TLS works the same way (another message: the same one again would be a
    // resend, answered with the first record).
    let second = sample_message("auth-2@example.org", "someone@foreign.example");
    let second = message_file(site.dir.path(), "m2.eml", &second);
    let implicit = smtp_send(
        site.levee.ports.submissions,
        Security::Implicit,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test"],
        &second,
    );
    assert_eq!(implicit["code"], 250, "{implicit}");

    // Wrong password: the upstream's 535 reaches the client.
    let bad = smtp_send(
        submission,
        Security::StartTls,
        Some(("alice", "not-the-password")),
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    assert_eq!(bad["stage"], "auth", "{bad}");
    assert_eq!(bad["code"], 535, "{bad}");

    // No AUTH, foreign recipient: refused on the relay port and on submission.
    for port in [site.levee.ports.relay, submission] {
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
            "open relay on {port}: {relay}"
        );
        let code = relay["code"].as_i64().unwrap();
        assert!((500..600).contains(&code) || code == 454, "{relay}");
    }

    // Unknown local user: the upstream's 550.
    let unknown = smtp_send(
        site.levee.ports.relay,
        Security::Plain,
        None,
        "bob@example.org",
        &["nobody-here@example.test"],
        &file,
    );
    assert_eq!(unknown["code"], 550, "{unknown}");
    assert_eq!(unknown["stage"], "rcpt", "{unknown}");

    // Plaintext AUTH is not offered: credentials never cross the wire in clear.
    let clear = smtp_send(
        submission,
        Security::Plain,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    assert!(!clear["ok"].as_bool().unwrap(), "{clear}");

    site.wait_for_messages("bob", &["auth-1@example.org".into()], 15);
    site.levee.stop();
    let records = site.journal_records();
    assert_eq!(
        records.len(),
        2,
        "only the two accepted messages are journaled"
    );
    for record in &records {
        let RecordKind::Message(message) = &record.kind else {
            unreachable!()
        };
        assert_eq!(message.client.authenticated_user.as_deref(), Some("alice"));
        assert!(message.client.tls);
        assert!(!contains(&message.body, password.as_bytes()));
    }
}
