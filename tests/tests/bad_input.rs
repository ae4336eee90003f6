//! Hostile and broken clients: each gets a clear SMTP error or a clean close, levee keeps
//! serving everyone else, and nothing partial is journaled as accepted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use levee_tests::{Site, send_sample};

/// A raw SMTP client that reads whole replies.
struct Raw {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut raw = Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        assert!(raw.reply().starts_with("220 "));
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The last line of the next reply ("" when the connection closed).
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return String::new(),
                Ok(_) => {}
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            other => panic!(
                "expected a close, got {other:?}: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

fn begin(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr);
    assert!(raw.cmd("EHLO raw.test").starts_with("250 "));
    assert!(raw.cmd("MAIL FROM:<bob@example.org>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    raw
}

fn still_serves(site: &Site, tag: &str) {
    let verdict = send_sample(
        site.dir.path(),
        site.levee.ports.relay,
        &format!("{tag}@example.org"),
        "alice@example.test",
    );
    assert_eq!(
        verdict["code"], 250,
        "levee stopped serving after {tag}: {verdict}"
    );
}

#[test]
fn bad_clients_get_clear_errors_and_nothing_partial_is_journaled() {
    let mut site = Site::start("bad-input");
    let relay = site.levee.ports.relay;

    // An over-long command line: 500 5.5.2, and the session goes on.
    let mut raw = Raw::connect(relay);
    let long = format!("EHLO {}\r\n", "a".repeat(10_000));
    raw.send(long.as_bytes());
    assert!(raw.reply().starts_with("500 5.5.2"), "over-long line");
    assert!(raw.cmd("NOOP").starts_with("250"));
    drop(raw);

    // A message over SIZE (1 MiB in the test config): announced too big, then sent anyway.
    let mut raw = begin(relay);
    assert!(raw.cmd("DATA").starts_with("354"));
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..20 {
        raw.send(&chunk);
        raw.send(b"\r\n");
    }
    raw.send(b".\r\n");
    let too_big = raw.reply();
    assert!(
        too_big.starts_with("552 5.3.4"),
        "oversized message: {too_big}"
    );
    assert!(raw.cmd("QUIT").starts_with("221"));
    drop(raw);
    let mut raw = Raw::connect(relay);
    let size = raw.cmd("EHLO raw.test");
    assert!(size.starts_with("250 "));
    assert!(
        raw.cmd("MAIL FROM:<bob@example.org> SIZE=999999999")
            .starts_with("552"),
        "SIZE parameter over the limit is refused up front"
    );
    drop(raw);

    // Garbage bytes: syntax errors, then 421 after too many, then a close.
    // max_errors is 10 by default: exactly that many lines, so levee has read them all.
    let mut raw = Raw::connect(relay);
    for _ in 0..10 {
        raw.send(b"\x00\xff\xfe garbage \x1b[31m\r\n");
    }
    for i in 0..10 {
        let reply = raw.reply();
        assert!(
            reply.starts_with("500 5.5.2"),
            "garbage line {i} got {reply:?}"
        );
    }
    let last = raw.reply();
    assert!(
        last.starts_with("421 4.7.0"),
        "too many errors must end with 421, got {last:?}"
    );
    assert!(raw.closed());

    // A client that stalls mid-DATA (data_timeout = 3 s): 421, closed, nothing journaled.
    let mut raw = begin(relay);
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Subject: stalled\r\nMessage-ID: <stalled@example.org>\r\n\r\nhalf a mess");
    let started = Instant::now();
    let stalled = raw.reply();
    assert!(
        stalled.starts_with("421 4.4.2"),
        "stalled client got {stalled:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(raw.closed());

    // A client that vanishes mid-DATA: nothing journaled.
    let mut raw = begin(relay);
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Subject: vanished\r\nMessage-ID: <vanished@example.org>\r\n\r\nhalf");
    drop(raw);

    // A TLS handshake of garbage on the implicit-TLS port: a clean close.
    let mut tls = TcpStream::connect(site.levee.ports.submissions).unwrap();
    tls.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tls.write_all(b"\x16\x03\x01\x00\x05garbage-garbage-garbage\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("220"),
        "no SMTP greeting without a TLS session"
    );

    // Plaintext pipelined after STARTTLS (command injection): refused and closed.
    let mut raw = Raw::connect(relay);
    assert!(raw.cmd("EHLO raw.test").starts_with("250 "));
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n");
    let injected = raw.reply();
    assert!(
        injected.starts_with("554 5.5.1"),
        "pipelined STARTTLS got {injected:?}"
    );
    assert!(raw.closed());

    // Commands out of order get 503, not a crash.
    let mut raw = Raw::connect(relay);
    assert!(raw.cmd("MAIL FROM:<a@example.org>").starts_with("503"));
    assert!(raw.cmd("EHLO raw.test").starts_with("250 "));
    assert!(raw.cmd("RCPT TO:<alice@example.test>").starts_with("503"));
    assert!(raw.cmd("DATA").starts_with("503"));
    drop(raw);

    still_serves(&site, "after-bad-input");
    site.wait_for_messages("alice", &["after-bad-input@example.org".into()], 15);
    site.levee.stop();
    let records = site.journal_records();
    let ids: Vec<Option<String>> = records
        .iter()
        .map(|r| match &r.kind {
            levee_journal::RecordKind::Message(m) => m.message_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        vec![Some("after-bad-input@example.org".to_string())],
        "only the good message may be journaled"
    );
}

#[test]
fn shutdown_tells_waiting_clients_421() {
    let mut site = Site::start("shutdown");
    let mut raw = Raw::connect(site.levee.ports.relay);
    assert!(raw.cmd("EHLO raw.test").starts_with("250 "));
    site.levee.stop();
    let reply = raw.reply();
    assert!(reply.starts_with("421 4.3.2"), "got {reply:?}");
    assert!(raw.closed());
}
