//! A client that lost the reply to its final dot sends the same message again: levee
//! answers 250 with the first record's id and neither journals nor delivers it twice. A
//! message that only shares the Message-ID (other bytes) is a message of its own.

use levee_tests::clients::{Security, smtp_send};
use levee_tests::{Site, contains, message_file, sample_message};

const ID: &str = "resend-1@example.org";

#[test]
fn a_resent_message_is_answered_with_its_first_record() {
    let mut site = Site::start("resend");
    let send = |name: &str, body: &[u8]| {
        let file = message_file(site.dir.path(), name, body);
        let verdict = smtp_send(
            site.levee.ports.relay,
            Security::Plain,
            None,
            "bob@example.org",
            &["alice@example.test"],
            &file,
        );
        assert_eq!(verdict["code"], 250, "{verdict}");
        verdict["reply"].as_str().unwrap_or_default().to_string()
    };
    let original = sample_message(ID, "alice@example.test");
    let first = send("first.eml", &original);
    let again = send("again.eml", &original);
    assert!(first.contains("queued as L1"), "{first}");
    assert!(
        again.contains("queued as L1") && again.contains("already received"),
        "the resend was not recognised: {again}"
    );
    let mut edited = original.clone();
    edited.extend_from_slice(b"A line the first copy did not have.\r\n");
    let other = send("edited.eml", &edited);
    assert!(other.contains("queued as L2"), "{other}");

    // Two messages with that Message-ID arrive, the edited one among them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let inbox = loop {
        let inbox = site.stack.inbox_messages("alice").unwrap_or_default();
        let ours = inbox.iter().filter(|m| contains(m, ID.as_bytes())).count();
        if ours >= 2 || std::time::Instant::now() > deadline {
            break inbox;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // Give a wrongly delivered third copy the time to show up too.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let inbox = site.stack.inbox_messages("alice").unwrap_or(inbox);
    let ours: Vec<_> = inbox
        .iter()
        .filter(|m| contains(m, ID.as_bytes()))
        .collect();
    assert_eq!(ours.len(), 2, "copies with {ID} in the INBOX");
    assert!(ours.iter().any(|m| m.ends_with(&edited)));
    assert_eq!(site.levee.metric("levee_messages_resent_total"), Some(1.0));

    site.levee.stop();
    let records = site.journal_records();
    assert_eq!(records.len(), 2, "journaled once each: {records:?}");
}
