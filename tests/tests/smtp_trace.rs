//! Every copy levee hands to a mail server carries one `Received:` header naming its
//! journal record (`id L<seq>.<first 8 chain bytes hex>`), above the client's bytes, which
//! follow unchanged; the journal keeps the client's bytes alone, and a declared `SIZE=`
//! counts the header.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use levee_journal::{DeliveryStatus, Record, RecordKind};
use levee_tests::clients::{Security, smtp_send};
use levee_tests::fake_mta::{FakeMta, Verdicts};
use levee_tests::{Site, contains, message_file, sample_message};

/// The levee header of a copy, and everything after it. Panics unless there is exactly
/// one.
fn split_at_levee_header(copy: &[u8]) -> (String, &[u8]) {
    let text = String::from_utf8_lossy(copy);
    let marks = text.matches(" (levee) with ").count();
    assert_eq!(marks, 1, "{marks} levee Received headers in:\n{text}");
    let mark = text.find(" (levee) with ").unwrap();
    let start = text[..mark].rfind("Received: ").expect("a Received field");
    // The field ends at the first line break not followed by a continuation line.
    let mut end = start;
    loop {
        let line_end = end + text[end..].find("\r\n").expect("CRLF") + 2;
        end = line_end;
        if !copy[end..].starts_with(b" ") && !copy[end..].starts_with(b"\t") {
            break;
        }
    }
    (text[start..end].to_string(), &copy[end..])
}

/// `L<seq>.<hex>` of a record, written out independently of levee's code.
fn expected_id(record: &Record) -> String {
    let hex: String = record.chain[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("L{}.{hex}", record.seq)
}

fn record_with_message_id<'a>(records: &'a [Record], id: &str) -> &'a Record {
    records
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::Message(m) if m.message_id.as_deref() == Some(id)))
        .unwrap_or_else(|| panic!("no journal record for {id}"))
}

/// Checks one mailbox copy against its journal record: one levee header, naming the
/// record, with the expected protocol, then exactly the client's bytes.
fn check_copy(copy: &[u8], record: &Record, sent: &[u8], protocol: &str) {
    let (header, rest) = split_at_levee_header(copy);
    let id = expected_id(record);
    assert!(
        header.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby levee.test (levee)"),
        "{header}"
    );
    assert!(
        header.contains(&format!(" with {protocol} id {id};\r\n\t")),
        "expected {protocol} and {id}: {header}"
    );
    assert!(header.lines().all(|line| line.len() < 998));
    assert_eq!(
        rest,
        sent,
        "the bytes after levee's header differ from what the client sent:\n{}",
        String::from_utf8_lossy(rest)
    );
    let RecordKind::Message(message) = &record.kind else {
        unreachable!()
    };
    assert_eq!(
        message.body, sent,
        "the journal must keep the client's bytes alone"
    );
}

#[test]
fn every_copy_levee_hands_on_names_its_journal_record() {
    let mut site = Site::start("trace");
    let password = site.password("alice");
    let live = sample_message("trace-live@example.org", "alice@example.test");
    let file = message_file(site.dir.path(), "live.eml", &live);
    let verdict = smtp_send(
        site.levee.ports.relay,
        Security::Plain,
        None,
        "bob@example.org",
        &["alice@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    let submitted = sample_message("trace-auth@example.org", "bob@example.test");
    let file = message_file(site.dir.path(), "auth.eml", &submitted);
    let verdict = smtp_send(
        site.levee.ports.submission,
        Security::StartTls,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");

    // The delivery worker's copy: the mail server is down when the client sends. It goes
    // down once it has finished with the two messages before (a Postfix killed between
    // its delivery and the removal of its queue file delivers again when it starts).
    site.wait_for_messages("alice", &["trace-live@example.org".into()], 20);
    site.wait_for_messages("bob", &["trace-auth@example.org".into()], 20);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let log = site.stack.dir().join("postfix/postfix.log");
    let removed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(": removed")
            .count()
    };
    while removed() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "Postfix kept its queue files"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    site.stack.stop_postfix().expect("stop postfix");
    let stored = sample_message("trace-stored@example.org", "alice@example.test");
    let file = message_file(site.dir.path(), "stored.eml", &stored);
    let verdict = smtp_send(
        site.levee.ports.relay,
        Security::Plain,
        None,
        "bob@example.org",
        &["alice@example.test"],
        &file,
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    site.stack.start_postfix().expect("start postfix");

    let ids = ["trace-live@example.org", "trace-stored@example.org"].map(String::from);
    site.wait_for_messages("alice", &ids, 30);
    site.wait_for_messages("bob", &["trace-auth@example.org".into()], 30);
    let alice = site.imap_messages("alice");
    let bob = site.imap_messages("bob");
    assert_eq!(alice.len(), 2, "alice: duplicates or strays");
    assert_eq!(bob.len(), 1, "bob: duplicates or strays");

    site.levee.stop();
    let journal = site.open_journal();
    let records = journal.read_from(1, usize::MAX).unwrap();
    for (copy, id, sent, protocol) in [
        (&alice, "trace-live@example.org", &live, "ESMTP"),
        (&alice, "trace-stored@example.org", &stored, "ESMTP"),
        (&bob, "trace-auth@example.org", &submitted, "ESMTPSA"),
    ] {
        let copy = copy
            .iter()
            .find(|m| contains(m, id.as_bytes()))
            .unwrap_or_else(|| panic!("{id} missing"));
        let record = record_with_message_id(&records, id);
        check_copy(copy, record, sent, protocol);
        assert_eq!(
            journal.state(record.seq).unwrap().unwrap().status,
            DeliveryStatus::Delivered,
            "{id}"
        );
    }
    let stored_seq = record_with_message_id(&records, "trace-stored@example.org").seq;
    assert!(
        journal.state(stored_seq).unwrap().unwrap().attempts >= 1,
        "the stored message was delivered by the worker"
    );
}

/// One SMTP exchange step: sends `line` (if any) and returns the complete reply.
fn step(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, line: &[u8]) -> String {
    if !line.is_empty() {
        writer.write_all(line).unwrap();
    }
    let mut reply = String::new();
    loop {
        let mut part = String::new();
        reader.read_line(&mut part).unwrap();
        reply.push_str(&part);
        if part.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

#[test]
fn a_declared_size_counts_the_header_and_the_upstream_gets_header_then_client_bytes() {
    let fake = FakeMta::start(Verdicts::Accept);
    let levee = fake.levee_in_front("trace-fake", "");
    let relay = levee.relay;

    let body = b"Subject: sized\r\nMessage-ID: <sized@example.org>\r\n\r\n.leading dot\r\nend\r\n";
    let stream = TcpStream::connect(relay).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    assert!(step(&mut reader, &mut writer, b"").starts_with("220"));
    assert!(step(&mut reader, &mut writer, b"EHLO client.test\r\n").starts_with("250"));
    let mail = format!("MAIL FROM:<a@example.org> SIZE={}\r\n", body.len());
    assert!(step(&mut reader, &mut writer, mail.as_bytes()).starts_with("250"));
    assert!(step(&mut reader, &mut writer, b"RCPT TO:<x@example.test>\r\n").starts_with("250"));
    assert!(step(&mut reader, &mut writer, b"DATA\r\n").starts_with("354"));
    let mut wire =
        b"Subject: sized\r\nMessage-ID: <sized@example.org>\r\n\r\n..leading dot\r\nend\r\n"
            .to_vec();
    wire.extend_from_slice(b".\r\n");
    let done = step(&mut reader, &mut writer, &wire);
    assert!(done.starts_with("250 2.0.0 Ok: queued as L1"), "{done}");
    let _ = step(&mut reader, &mut writer, b"QUIT\r\n");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);

    let (journal, _dir) = levee.stop();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (header, after) = split_at_levee_header(&seen[0].data);
    assert_eq!(after, body, "the client's bytes changed on the way");
    assert_eq!(seen[0].data.len(), header.len() + body.len());
    let declared: usize = seen[0]
        .mail
        .split_once("SIZE=")
        .and_then(|(_, n)| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no SIZE in {:?}", seen[0].mail));
    assert!(
        declared >= seen[0].data.len(),
        "declared {declared} bytes but sent {}: {}",
        seen[0].data.len(),
        seen[0].mail
    );
    assert!(
        declared < body.len() + 400,
        "SIZE grew by far more than a header: {declared}"
    );

    let record = journal.get(1).unwrap().expect("record 1");
    assert!(
        header.contains(&format!(" with ESMTP id {};\r\n", expected_id(&record))),
        "{header}"
    );
    let RecordKind::Message(message) = &record.kind else {
        unreachable!()
    };
    assert_eq!(message.body, body);
}
