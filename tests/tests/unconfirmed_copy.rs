//! A mail server that takes a message's final dot and breaks the connection before its
//! verdict may have queued the message. levee marks the record, and sends its own copy
//! only after `delivery.unconfirmed_wait` (not at its next retry, which comes far sooner):
//! a queued copy that arrives meanwhile must not be joined by a second one. Without a
//! master user levee cannot look into the mailbox, so after the wait it sends.

use std::time::{Duration, Instant};

use levee_journal::DeliveryStatus;
use levee_tests::fake_mta::{FakeMta, Verdicts};
use levee_tests::load::SmtpSession;

const WAIT: Duration = Duration::from_secs(3);

#[test]
fn a_copy_the_mail_server_did_not_confirm_is_not_sent_again_before_the_wait() {
    let fake = FakeMta::start(Verdicts::DropFirst);
    let wait = format!(
        "\n[delivery]\nretry_initial = \"200ms\"\nretry_max = \"500ms\"\nunconfirmed_wait = \"{}s\"\n",
        WAIT.as_secs()
    );
    let levee = fake.levee_in_front("unconfirmed", &wait);
    let relay = levee.relay;

    let body = b"Subject: unconfirmed\r\nMessage-ID: <unconfirmed@example.org>\r\n\r\nhi\r\n";
    let (verdict, _) = SmtpSession::connect(relay)
        .and_then(|mut client| client.transfer("a@example.org", "x@example.test", body))
        .expect("the message through levee");
    assert!(
        verdict.starts_with("250 2.0.0 Ok: queued as L1"),
        "{verdict}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.seen().len() < 2 {
        assert!(Instant::now() < deadline, "levee never sent its own copy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = fake.seen();
    let apart = seen[1].at - seen[0].at;
    assert!(
        apart >= WAIT - Duration::from_millis(100),
        "the second copy came {apart:?} after the unconfirmed one, before the {WAIT:?} wait"
    );
    let (journal, _dir) = levee.stop();
    let state = journal.state(1).unwrap().expect("a delivery state");
    assert_eq!(state.status, DeliveryStatus::Delivered, "{state:?}");
    assert_eq!(
        journal.unconfirmed_len(),
        0,
        "the mark outlived the delivery"
    );
}
