//! SMTP during failover: once the replica is active, new transactions go to the replica's
//! MTA in lockstep (relay verdicts and AUTH are its own), local recipients reach the
//! replica's mailboxes through the journal and its applier only (never a second time
//! through its MTA), and other recipients are relayed by its MTA. A transaction whose
//! upstream dies after RCPT still gets 250, and its message reaches the mailbox once.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use levee_journal::{DeliveryStatus, Record, RecordKind};
use levee_tests::clients::{Security, smtp_send};
use levee_tests::{
    LeveeMode, ReplicaSite, Site, contains, message_file, sample_message, tail, wait_for_messages,
};

/// What levee records when the replica's applier delivers every recipient.
const BY_APPLIER: &str = "local recipients are delivered at the replica by the applier";

/// A primary streaming to `replica` and failing over to all of its mail servers fast.
fn start_pair(name: &str) -> (ReplicaSite, Site) {
    let replica = ReplicaSite::start(&format!("{name}-replica"), LeveeMode::Child);
    let extra = format!(
        "{}\n[upstream.replica]\nsmtp = \"{}\"\nsubmission = \"{}\"\nimap = \"{}\"\n\n\
         [failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n",
        replica.link.primary_section("async", "2s"),
        replica.stack.smtp_addr(),
        replica.stack.submission_addr(),
        replica.stack.imap_addr()
    );
    let primary = Site::start_with(&format!("{name}-primary"), LeveeMode::Child, &extra);
    (replica, primary)
}

fn wait_for_status(site: &Site, what: &str, probe: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = site.levee.status();
        if probe(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s\nstatus: {status}\nlog:\n{}",
            tail(&site.levee.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn replica_active(status: &serde_json::Value) -> bool {
    status["failover"]["active"]["backend"] == "replica"
}

/// How many of `messages` contain `needle`.
fn copies(messages: &[Vec<u8>], needle: &str) -> usize {
    messages
        .iter()
        .filter(|m| contains(m, needle.as_bytes()))
        .count()
}

/// Waits for `needles` in `user`'s INBOX at `stack`, gives a second copy time to arrive,
/// then reads the INBOX again over IMAP.
fn settled_inbox(
    stack: &levee_proxy::mailstack::MailStack,
    user: &str,
    needles: &[&str],
) -> Vec<Vec<u8>> {
    let needles: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
    wait_for_messages(stack, user, &needles, 30);
    std::thread::sleep(Duration::from_secs(3));
    let password = (stack.users().iter())
        .find(|(name, _)| name == user)
        .map(|(_, password)| password.clone())
        .expect("a user of the stack");
    levee_tests::clients::imap_fetch(stack.imap_addr(), user, &password)
}

/// Postfix's whole log, without the health checks' connect/disconnect lines.
fn postfix_log(stack: &levee_proxy::mailstack::MailStack) -> String {
    let path = stack.dir().join("postfix/postfix.log");
    let full = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    full.lines()
        .filter(|l| !l.contains("connect from"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn record_for<'a>(records: &'a [Record], message_id: &str) -> &'a Record {
    records
        .iter()
        .find(|r| {
            matches!(&r.kind, RecordKind::Message(m) if m.message_id.as_deref() == Some(message_id))
        })
        .unwrap_or_else(|| panic!("no journal record for {message_id}"))
}

#[test]
fn with_the_replica_active_mail_goes_through_its_mta_and_reaches_each_mailbox_once() {
    let (replica, mut primary) = start_pair("smtpfo");
    wait_for_status(&primary, "both sites healthy", |s| {
        s["failover"]["health"]["primary_ok"] == true
            && s["failover"]["health"]["replica_ok"] == true
    });
    // The users and passwords are the same at both sites (AUTH works after failover).
    assert_eq!(primary.stack.users(), replica.stack.users());

    // Before the failover: the primary's copy through its MTA, the replica's from the
    // applier, both naming the same record.
    let before = sample_message("fo-before@example.org", "alice@example.test");
    let file = message_file(primary.dir.path(), "before.eml", &before);
    let verdict = smtp_send(
        primary.levee.ports.relay,
        Security::Plain,
        None,
        "sender@example.org",
        &["alice@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    let at_primary = primary.wait_for_messages("alice", &["fo-before@example.org".into()], 20);
    let at_replica = replica.wait_for_messages("alice", &["fo-before@example.org".into()], 20);
    let id = |copy: &[u8], marker: &str| {
        let text = String::from_utf8_lossy(copy).to_string();
        let at = text
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"));
        let rest = &text[at..];
        let id = rest
            .split(" id ")
            .nth(1)
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap();
        id.to_string()
    };
    assert_eq!(
        id(&at_primary[0], "(levee) with"),
        id(&at_replica[0], "(levee apply) with"),
        "both copies name one record"
    );

    primary
        .stack
        .stop_postfix()
        .expect("stop the primary's Postfix");
    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    wait_for_status(&primary, "failover to the replica", replica_active);

    // The relay port: a local recipient, and the replica MTA's own relay verdict.
    let relayed = sample_message("fo-relay@example.org", "alice@example.test");
    let file = message_file(primary.dir.path(), "relay.eml", &relayed);
    let verdict = smtp_send(
        primary.levee.ports.relay,
        Security::Plain,
        None,
        "sender@example.org",
        &["alice@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    let denied = smtp_send(
        primary.levee.ports.relay,
        Security::Plain,
        None,
        "spammer@foreign.example",
        &["victim@elsewhere.example"],
        &file,
    );
    assert_eq!(denied["code"], 554, "{denied}");
    assert!(
        denied["reply"]
            .as_str()
            .unwrap_or("")
            .contains("Relay access denied"),
        "the verdict is Postfix's own: {denied}"
    );

    // Submission: AUTH at the replica's MTA, one local and one remote recipient.
    let password = primary.password("alice");
    let submitted = sample_message("fo-submit@example.org", "bob@example.test");
    let file = message_file(primary.dir.path(), "submit.eml", &submitted);
    let verdict = smtp_send(
        primary.levee.ports.submission,
        Security::StartTls,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test", "far@elsewhere.example"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    assert_eq!(verdict["refused"], serde_json::json!({}), "{verdict}");
    let bad = smtp_send(
        primary.levee.ports.submission,
        Security::StartTls,
        Some(("alice", "not-the-password")),
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    assert_eq!(bad["code"], 535, "{bad}");

    let alice = settled_inbox(
        &replica.stack,
        "alice",
        &["fo-before@example.org", "fo-relay@example.org"],
    );
    let bob = settled_inbox(&replica.stack, "bob", &["fo-submit@example.org"]);
    assert_eq!(
        copies(&alice, "fo-relay@example.org"),
        1,
        "alice's relay message"
    );
    assert_eq!(
        copies(&alice, "fo-before@example.org"),
        1,
        "alice's earlier message"
    );
    assert_eq!(alice.len(), 2, "alice: strays");
    assert_eq!(
        copies(&bob, "fo-submit@example.org"),
        1,
        "bob's submitted message"
    );
    assert_eq!(bob.len(), 1, "bob: strays");
    for copy in alice.iter().chain(&bob) {
        let text = String::from_utf8_lossy(copy);
        assert_eq!(text.matches("(levee apply) with").count(), 1, "{text}");
        assert!(
            !text.contains("(levee) with"),
            "a local copy came through the replica's MTA:\n{text}"
        );
        assert!(copy.ends_with(&relayed) || copy.ends_with(&submitted) || copy.ends_with(&before));
    }

    // The replica's MTA authenticated alice, relayed the remote recipient and never saw
    // the local ones.
    let log = postfix_log(&replica.stack);
    assert!(
        log.contains("sasl_username=alice"),
        "no AUTH at the replica's MTA:\n{}",
        tail(&log, 30)
    );
    assert!(
        log.lines()
            .any(|l| l.contains("to=<far@elsewhere.example>") && l.contains("status=sent")),
        "the remote recipient was not relayed by the replica's MTA:\n{}",
        tail(&log, 30)
    );
    for local in ["to=<bob@example.test>", "to=<alice@example.test>"] {
        assert!(
            !log.contains(local),
            "the replica's MTA was handed a local recipient ({local}):\n{}",
            tail(&log, 30)
        );
    }

    primary.levee.stop();
    let records = primary.journal_records();
    let journal = primary.open_journal();
    let state = |id: &str| {
        journal
            .state(record_for(&records, id).seq)
            .unwrap()
            .unwrap()
    };
    let relay_state = state("fo-relay@example.org");
    assert_eq!(
        relay_state.status,
        DeliveryStatus::Delivered,
        "{relay_state:?}"
    );
    assert_eq!(relay_state.last_reply.as_deref(), Some(BY_APPLIER));
    let submit_state = state("fo-submit@example.org");
    assert_eq!(
        submit_state.status,
        DeliveryStatus::Delivered,
        "{submit_state:?}"
    );
    let reply = submit_state.last_reply.unwrap_or_default();
    assert!(
        reply.starts_with("250") && reply.ends_with(BY_APPLIER),
        "{reply}"
    );
}

/// A raw SMTP client, for killing the server between two commands.
struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSmtp {
    fn connect(addr: SocketAddr) -> RawSmtp {
        let stream = TcpStream::connect(addr).expect("connect to levee");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = RawSmtp {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        };
        client.expect("", "220");
        client
    }

    /// Sends `line` (nothing when empty) and checks the reply's start.
    fn expect(&mut self, line: &str, code: &str) -> String {
        if !line.is_empty() {
            self.writer.write_all(line.as_bytes()).unwrap();
        }
        let mut reply = String::new();
        loop {
            let mut part = String::new();
            self.reader.read_line(&mut part).unwrap();
            reply.push_str(&part);
            if part.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(
            reply.starts_with(code),
            "{line:?}: expected {code}, got {reply:?}"
        );
        reply
    }

    /// MAIL and RCPT, both answered by the mail server.
    fn envelope(&mut self, rcpt: &str) {
        self.expect("EHLO client.test\r\n", "250");
        self.expect("MAIL FROM:<sender@example.org>\r\n", "250");
        self.expect(&format!("RCPT TO:<{rcpt}>\r\n"), "250");
    }

    /// DATA with a sample message (dot-stuffed), and the final reply.
    fn data(&mut self, body: &[u8]) -> String {
        self.expect("DATA\r\n", "354");
        let mut wire = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        self.writer.write_all(&wire).unwrap();
        self.expect("", "250")
    }
}

#[test]
fn upstream_dying_after_rcpt_with_a_replica_the_applier_delivers_once() {
    let (replica, mut primary) = start_pair("smtpmid");
    wait_for_status(&primary, "both sites healthy", |s| {
        s["failover"]["health"]["primary_ok"] == true
            && s["failover"]["health"]["replica_ok"] == true
    });
    let body = sample_message("mid-fo@example.org", "alice@example.test");
    let mut client = RawSmtp::connect(primary.levee.ports.relay);
    client.envelope("alice@example.test");
    primary
        .stack
        .stop_postfix()
        .expect("stop the primary's Postfix");
    let reply = client.data(&body);
    assert!(reply.contains("queued as L"), "{reply}");
    client.expect("QUIT\r\n", "221");

    wait_for_status(&primary, "failover to the replica", replica_active);
    let alice = settled_inbox(&replica.stack, "alice", &["mid-fo@example.org"]);
    assert_eq!(
        copies(&alice, "mid-fo@example.org"),
        1,
        "copies at the replica"
    );
    assert!(alice[0].ends_with(&body));
    assert!(primary.stack.inbox_messages("alice").unwrap().is_empty());

    // The delivery worker, now on the replica, leaves the message to the applier.
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary
        .levee
        .metric("levee_messages_delivered_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the deferred message was never settled\n{}",
            tail(&primary.levee.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    primary.levee.stop();
    let records = primary.journal_records();
    let state = primary
        .open_journal()
        .state(record_for(&records, "mid-fo@example.org").seq)
        .unwrap()
        .unwrap();
    assert_eq!(state.status, DeliveryStatus::Delivered, "{state:?}");
    assert_eq!(state.last_reply.as_deref(), Some(BY_APPLIER));
}

#[test]
fn upstream_dying_after_rcpt_without_a_replica_the_worker_delivers_once() {
    let mut site = Site::start("smtpmid-single");
    let body = sample_message("mid-single@example.org", "alice@example.test");
    let mut client = RawSmtp::connect(site.levee.ports.relay);
    client.envelope("alice@example.test");
    site.stack.stop_postfix().expect("stop Postfix");
    let reply = client.data(&body);
    assert!(reply.contains("queued as L"), "{reply}");
    client.expect("QUIT\r\n", "221");
    assert!(site.stack.inbox_messages("alice").unwrap().is_empty());

    site.stack.start_postfix().expect("start Postfix");
    let alice = settled_inbox(&site.stack, "alice", &["mid-single@example.org"]);
    assert_eq!(copies(&alice, "mid-single@example.org"), 1, "copies");
    let text = String::from_utf8_lossy(&alice[0]);
    assert_eq!(text.matches("(levee) with").count(), 1, "{text}");
    assert!(alice[0].ends_with(&body));

    site.levee.stop();
    let records = site.journal_records();
    let record = record_for(&records, "mid-single@example.org");
    let state = site.open_journal().state(record.seq).unwrap().unwrap();
    assert_eq!(state.status, DeliveryStatus::Delivered, "{state:?}");
    assert!(state.attempts >= 1, "{state:?}");
    assert!(text.contains(&format!(" id L{}.", record.seq)), "{text}");
}
