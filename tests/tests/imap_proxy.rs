//! IMAP through levee to the real Dovecot: the same bytes and UIDs as directly, IDLE on
//! one connection, levee's own TLS rules, and bad input that ends cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use levee_tests::clients::{Security, decode_b64, imap_fetch_with, imap_idle};
use levee_tests::{Site, contains, sample_message, send_sample};

fn uids_and_bodies(value: &serde_json::Value) -> Vec<(u64, Vec<u8>)> {
    assert_eq!(value["ok"], true, "{value}");
    value["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["uid"].as_u64().unwrap(),
                decode_b64(m["body_b64"].as_str().unwrap()),
            )
        })
        .collect()
}

#[test]
fn mailbox_reads_the_same_through_levee_as_directly() {
    let site = Site::start("imap-read");
    let ids: Vec<String> = (0..3).map(|i| format!("imap-{i}@example.org")).collect();
    for id in &ids {
        let verdict = send_sample(
            site.dir.path(),
            site.levee.ports.relay,
            id,
            "alice@example.test",
        );
        assert_eq!(verdict["code"], 250, "{verdict}");
    }
    site.wait_for_messages("alice", &ids, 15);
    let password = site.password("alice");

    let direct = imap_fetch_with(site.stack.imap_addr(), Security::Plain, "alice", &password);
    let starttls = imap_fetch_with(
        site.levee.ports.imap,
        Security::StartTls,
        "alice",
        &password,
    );
    let implicit = imap_fetch_with(
        site.levee.ports.imaps,
        Security::Implicit,
        "alice",
        &password,
    );
    assert_eq!(direct["uidvalidity"], starttls["uidvalidity"]);
    assert_eq!(direct["uidvalidity"], implicit["uidvalidity"]);
    let direct = uids_and_bodies(&direct);
    assert_eq!(direct.len(), 3);
    assert_eq!(uids_and_bodies(&starttls), direct, "STARTTLS view differs");
    assert_eq!(
        uids_and_bodies(&implicit),
        direct,
        "implicit TLS view differs"
    );
    for id in &ids {
        let sent = sample_message(id, "alice@example.test");
        assert!(direct.iter().any(|(_, body)| body.ends_with(&sent)));
    }

    let wrong = imap_fetch_with(site.levee.ports.imaps, Security::Implicit, "alice", "nope");
    assert_eq!(wrong["ok"], false, "{wrong}");
    assert_eq!(wrong["stage"], "auth", "{wrong}");
}

#[test]
fn idle_reports_new_mail_on_the_same_connection() {
    let site = Site::start("imap-idle");
    let password = site.password("alice");
    let mut client = imap_idle(site.levee.ports.imaps, true, "alice", &password);
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "IDLING", "client did not reach IDLE: {line}");

    let verdict = send_sample(
        site.dir.path(),
        site.levee.ports.relay,
        "while-idle@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    line.clear();
    out.read_line(&mut line).unwrap();
    let result: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("no JSON from the IDLE client ({e}): {line}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["exists_after"],
        result["exists_before"].as_u64().unwrap() + 1
    );
    let body = decode_b64(result["body_b64"].as_str().unwrap());
    assert!(body.ends_with(&sample_message(
        "while-idle@example.org",
        "alice@example.test"
    )));
    assert!(client.wait().unwrap().success());
}

/// A plain-text IMAP conversation with levee, one line at a time.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Lines up to and including the one starting with `tag `.
    fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            assert!(
                !line.is_empty(),
                "connection closed before {tag}: {lines:?}"
            );
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Whether the server closed the connection within the read timeout (EOF, or a reset
    /// because the client's unread bytes were discarded), rather than leaving it open.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn levee_keeps_its_own_tls_rules_and_hides_compress() {
    let site = Site::start("imap-rules");
    let mut raw = Raw::connect(site.levee.ports.imap);
    let greeting = raw.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    for word in ["STARTTLS", "LOGINDISABLED"] {
        assert!(greeting.contains(word), "greeting lacks {word}: {greeting}");
    }
    raw.send(b"c1 CAPABILITY\r\n");
    let lines = raw.until("c1");
    let caps = lines
        .iter()
        .find(|l| l.starts_with("* CAPABILITY"))
        .unwrap();
    assert!(!caps.contains("COMPRESS"), "{caps}");
    assert!(
        !caps.contains("AUTH=PLAIN"),
        "PLAIN offered in clear: {caps}"
    );

    let password = site.password("alice");
    raw.send(format!("a1 LOGIN alice {password}\r\n").as_bytes());
    let reply = raw.until("a1").pop().unwrap();
    assert!(reply.starts_with("a1 NO [PRIVACYREQUIRED]"), "{reply}");
    raw.send(b"a2 COMPRESS DEFLATE\r\n");
    let reply = raw.until("a2").pop().unwrap();
    assert!(reply.starts_with("a2 NO"), "{reply}");
    // Pipelined plaintext after STARTTLS would be injected into the TLS session.
    raw.send(b"a3 STARTTLS\r\na4 NOOP\r\n");
    let rest: Vec<String> = std::iter::from_fn(|| {
        let line = raw.line();
        (!line.is_empty()).then_some(line)
    })
    .collect();
    assert!(
        rest.iter().any(|l| l.starts_with("* BYE")) && !rest.iter().any(|l| l.starts_with("a3 OK")),
        "{rest:?}"
    );
}

#[test]
fn bad_input_gets_a_clear_answer_and_levee_serves_others() {
    let site = Site::start("imap-bad");
    // A literal that never ends: the client stops sending inside it.
    let mut silent = Raw::connect(site.levee.ports.imap);
    silent.line();
    silent.send(b"u1 LOGIN {5}\r\n");
    assert!(silent.line().starts_with('+'));
    silent.send(b"ali");
    let silent_since = std::time::Instant::now();

    // A literal over the limit: refused, the session goes on.
    let mut raw = Raw::connect(site.levee.ports.imap);
    raw.line();
    raw.send(b"t1 APPEND INBOX {999999999}\r\n");
    let reply = raw.until("t1").pop().unwrap();
    assert!(reply.starts_with("t1 NO [TOOBIG]"), "{reply}");
    raw.send(b"t2 NOOP\r\n");
    let reply = raw.until("t2").pop().unwrap();
    assert!(reply.starts_with("t2 OK"), "{reply}");

    // A command line of megabytes: BYE and close.
    let mut long = Raw::connect(site.levee.ports.imap);
    long.line();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        if long.writer.write_all(&chunk).is_err() {
            break;
        }
    }
    let bye = long.line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert!(long.closed());

    // A client that vanishes in the middle of a literal, and one sending garbage.
    let mut gone = Raw::connect(site.levee.ports.imap);
    gone.line();
    gone.send(b"v1 APPEND INBOX {100}\r\n");
    assert!(gone.line().starts_with('+'));
    gone.send(&[b'y'; 40]);
    drop(gone);
    let mut garbage = Raw::connect(site.levee.ports.imap);
    garbage.line();
    garbage.send(b"\x00\xff\xfe garbage \x01\r\n");
    let reply = garbage.line();
    assert!(reply.contains("BAD"), "{reply}");

    // AUTHENTICATE with garbage (over TLS, so that it reaches the server), as an initial
    // response and as a continuation line: NO or BAD, and the session goes on.
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
f = s.makefile("rb")
f.readline()
def until(tag):
    while True:
        line = f.readline().decode()
        if not line or line.startswith(tag + " "):
            return line.strip()
s.sendall(b"a1 AUTHENTICATE PLAIN %%%not-base64%%%\r\n"); print(until("a1"))
s.sendall(b"a2 AUTHENTICATE PLAIN\r\n"); go = f.readline().decode()
s.sendall(b"\x01\x02 garbage\r\n"); print(go.strip() if go.startswith("a2 ") else until("a2"))
s.sendall(b"a3 NOOP\r\n"); print(until("a3"))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, &site.levee.ports.imaps.port().to_string()])
        .output()
        .expect("python3");
    let replies = String::from_utf8_lossy(&output.stdout).to_string();
    let replies: Vec<&str> = replies.lines().collect();
    assert_eq!(replies.len(), 3, "{replies:?}");
    for (reply, tag) in replies[..2].iter().zip(["a1", "a2"]) {
        assert!(
            reply.starts_with(&format!("{tag} NO")) || reply.starts_with(&format!("{tag} BAD")),
            "{replies:?}"
        );
    }
    assert!(replies[2].starts_with("a3 OK"), "{replies:?}");

    // The unterminated literal: the login timeout ends that session with BYE.
    let bye = silent.line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert!(silent.closed());
    assert!(silent_since.elapsed() < std::time::Duration::from_secs(30));

    // Still serving: a full read over TLS.
    let password = site.password("alice");
    let verdict = send_sample(
        site.dir.path(),
        site.levee.ports.relay,
        "after-bad@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "{verdict}");
    site.wait_for_messages("alice", &["after-bad@example.org".into()], 15);
    let view = imap_fetch_with(
        site.levee.ports.imaps,
        Security::Implicit,
        "alice",
        &password,
    );
    let messages = uids_and_bodies(&view);
    assert_eq!(
        messages.len(),
        1,
        "the vanished client's APPEND must not have landed"
    );
    assert!(contains(&messages[0].1, b"after-bad@example.org"));
}
