//! The mail server fails; levee keeps accepting mail for its local domains (250 only once
//! the journal is durable) and delivers all of it when the server is back: nothing lost,
//! nothing duplicated.

use levee_journal::DeliveryStatus;
use levee_tests::clients::{Security, smtp_send};
use levee_tests::{Site, contains, message_file, sample_message};

#[test]
fn upstream_down_mail_is_kept_and_delivered_once_when_it_returns() {
    let mut site = Site::start("store-forward");
    site.stack.stop_postfix().expect("stop postfix");

    let ids: Vec<String> = (0..12).map(|i| format!("outage-{i}@example.org")).collect();
    for (i, id) in ids.iter().enumerate() {
        let rcpt = if i % 2 == 0 {
            "alice@example.test"
        } else {
            "bob@example.test"
        };
        let file = message_file(
            site.dir.path(),
            &format!("{i}.eml"),
            &sample_message(id, rcpt),
        );
        let verdict = smtp_send(
            site.levee.ports.relay,
            Security::Plain,
            None,
            "sender@example.org",
            &[rcpt],
            &file,
        );
        assert_eq!(
            verdict["code"], 250,
            "message {i} not accepted while upstream down: {verdict}"
        );
    }

    // Without an upstream levee must still refuse what it cannot judge: foreign domains on
    // the relay port, and submission entirely.
    let file = message_file(
        site.dir.path(),
        "foreign.eml",
        &sample_message("foreign@example.org", "x@elsewhere.example"),
    );
    let relay = smtp_send(
        site.levee.ports.relay,
        Security::Plain,
        None,
        "spammer@foreign.example",
        &["x@elsewhere.example"],
        &file,
    );
    assert_eq!(
        relay["code"], 550,
        "open relay while upstream down: {relay}"
    );
    let submission = smtp_send(
        site.levee.ports.submission,
        Security::Plain,
        None,
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    let code = submission["code"].as_i64().unwrap();
    assert!(
        (400..500).contains(&code),
        "submission must answer 4xx: {submission}"
    );

    // Nothing has reached a mailbox yet.
    assert!(site.stack.inbox_messages("alice").unwrap().is_empty());

    site.stack.start_postfix().expect("start postfix");
    let alice: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let bob: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    let alice_box = site.wait_for_messages("alice", &alice, 30);
    let bob_box = site.wait_for_messages("bob", &bob, 30);
    // Give a duplicate the chance to show up before counting.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let alice_box_later = site.stack.inbox_messages("alice").unwrap();
    assert_eq!(alice_box.len(), alice.len(), "alice: duplicates or strays");
    assert_eq!(
        alice_box_later.len(),
        alice.len(),
        "alice: duplicate after delivery"
    );
    assert_eq!(bob_box.len(), bob.len(), "bob: duplicates or strays");
    for id in &ids {
        let copies = alice_box_later
            .iter()
            .chain(bob_box.iter())
            .filter(|m| contains(m, id.as_bytes()))
            .count();
        assert_eq!(copies, 1, "{id} delivered {copies} times");
    }
    assert!(
        !alice_box
            .iter()
            .any(|m| contains(m, b"foreign@example.org"))
    );

    site.levee.stop();
    let journal = site.open_journal();
    assert_eq!(
        journal.head(),
        ids.len() as u64,
        "refused mail must not be journaled"
    );
    for seq in 1..=journal.head() {
        let state = journal.state(seq).unwrap().unwrap();
        assert_eq!(
            state.status,
            DeliveryStatus::Delivered,
            "seq {seq}: {state:?}"
        );
        assert!(state.attempts >= 1);
    }
    assert!(journal.undelivered(100).unwrap().is_empty());
    assert!(journal.verify().unwrap().first_broken.is_none());
}
