//! `levee run --take-over` replaces a running levee (a new binary, in production) without
//! refusing anyone: the SMTP transaction in progress finishes at the old process, which
//! then says 421; a client that connects meanwhile waits and is served by the new one; an
//! IMAP client in IDLE is told `BYE [UNAVAILABLE]`, logs in again at the new one and
//! finds every message. Nothing acknowledged is lost or doubled.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use levee_tests::imap_load::{ImapClient, Security, show};
use levee_tests::load::{SmtpSession, message};
use levee_tests::{LeveeMode, Site, tail};

const DURING: &str = "takeover-during@example.org";
const MEANWHILE: &str = "takeover-meanwhile@example.org";

/// A transaction left half-way through its body.
struct Unfinished {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    rest: Vec<u8>,
}

impl Unfinished {
    fn start(addr: SocketAddr, id: &str) -> Unfinished {
        let writer = TcpStream::connect(addr).expect("SMTP to levee");
        writer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut t = Unfinished {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
            rest: Vec::new(),
        };
        t.expect("220");
        for (line, code) in [
            ("EHLO client.example.org\r\n", "250 "),
            ("MAIL FROM:<sender@example.org>\r\n", "250"),
            ("RCPT TO:<alice@example.test>\r\n", "250"),
            ("DATA\r\n", "354"),
        ] {
            t.writer.write_all(line.as_bytes()).unwrap();
            t.expect(code);
        }
        let body = message(id, 4_000);
        let (first, rest) = body.split_at(body.len() / 2);
        t.writer.write_all(first).unwrap();
        t.rest = rest.to_vec();
        t
    }

    /// Reads lines up to the one starting with `code`; returns it.
    fn expect(&mut self, code: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("an SMTP reply");
            assert!(n > 0, "connection closed while waiting for {code}");
            if line.starts_with(code) {
                return line;
            }
            assert!(
                line.as_bytes().get(3) == Some(&b'-'),
                "expected {code}, got {line:?}"
            );
        }
    }

    fn finish(mut self) -> (String, String) {
        self.writer.write_all(&self.rest).unwrap();
        self.writer.write_all(b".\r\n").unwrap();
        let verdict = self.expect("250");
        // Between transactions the stopping process says goodbye.
        let goodbye = self.expect("421");
        (verdict, goodbye)
    }
}

/// A site with levee as a child, a runtime for IMAP clients, and alice's session at it:
/// logged in, INBOX selected, and one NOOP answered (levee's own look at the mailbox after
/// SELECT is done by then).
fn site_with_session(name: &str) -> (Site, tokio::runtime::Runtime, ImapClient, Security) {
    let site = Site::start_with(name, LeveeMode::Child, "");
    let tls = Security::tls(&site.cert_path()).expect("the site's CA");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(log_in(&site, &tls));
    (site, rt, client, tls)
}

async fn log_in(site: &Site, tls: &Security) -> ImapClient {
    let mut client = ImapClient::connect(site.levee.ports.imaps, tls)
        .await
        .expect("IMAP to levee");
    client
        .login("alice", &site.password("alice"))
        .await
        .expect("LOGIN");
    client.select("INBOX").await.expect("SELECT");
    client.ok("NOOP").await.expect("NOOP");
    client
}

/// Waits until levee's log has a line containing `what`.
fn wait_for(log: &std::path::Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(Instant::now() < deadline, "levee never logged {what:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_successor_takes_over_without_refusing_or_losing_anything() {
    let (mut site, rt, mut idler, tls) = site_with_session("takeover");
    rt.block_on(idler.idle()).expect("IDLE");
    let relay = site.levee.ports.relay;
    let unfinished = Unfinished::start(relay, DURING);

    let log = site.levee.log_path.clone();
    let levee = &mut site.levee;
    let (stopped_in, meanwhile, verdict, goodbye, bye) = std::thread::scope(|s| {
        let takeover = s.spawn(|| levee.take_over());
        // Once the old process has closed its listener, new clients reach the successor.
        wait_for(&log, &format!("no longer accepting listener=relay@{relay}"));
        // The old process no longer accepts: this client waits for the new one.
        let meanwhile = s.spawn(move || {
            let mut client = SmtpSession::connect(relay).expect("greeted by the successor");
            client.send(
                "sender@example.org",
                "alice@example.test",
                &message(MEANWHILE, 3_000),
            )
        });
        let bye = rt.block_on(async {
            let line = tokio::time::timeout(Duration::from_secs(20), idler.response()).await;
            show(
                &line
                    .expect("BYE within 20 s")
                    .expect("a line before the close"),
            )
        });
        let (verdict, goodbye) = unfinished.finish();
        let stopped_in = takeover.join().expect("take over");
        let meanwhile = meanwhile.join().expect("the waiting client");
        (stopped_in, meanwhile, verdict, goodbye, bye)
    });
    let context = || tail(&site.levee.log(), 40);
    assert!(
        bye.starts_with("* BYE [UNAVAILABLE]"),
        "IMAP in IDLE: {bye}\n{}",
        context()
    );
    assert!(verdict.contains("queued as L"), "{verdict}");
    assert!(goodbye.starts_with("421 4.3.2"), "{goodbye}");
    let (seq, _) = meanwhile.unwrap_or_else(|e| panic!("the waiting client: {e}\n{}", context()));
    assert!(seq > 0);
    eprintln!("the old levee stopped {stopped_in:?} after SIGTERM");

    // Both messages are delivered once, and an IMAP client logs in at the new process.
    let ids = [DURING.to_string(), MEANWHILE.to_string()];
    site.wait_for_messages("alice", &ids, 30);
    let listed = rt.block_on(async {
        let mut client = log_in(&site, &tls).await;
        let reply = client
            .ok("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            .await
            .expect("FETCH");
        reply.text()
    });
    for id in &ids {
        assert_eq!(listed.matches(id.as_str()).count(), 1, "{id}: {listed}");
    }
    site.levee.stop();
    let journaled: Vec<String> = site
        .journal_records()
        .iter()
        .filter_map(|r| match &r.kind {
            levee_journal::RecordKind::Message(m) => m.message_id.clone(),
            _ => None,
        })
        .collect();
    for id in &ids {
        assert_eq!(
            journaled.iter().filter(|j| *j == id).count(),
            1,
            "{journaled:?}"
        );
    }
}

/// A stopping levee answers an IMAP command in flight before its BYE: the client is never
/// left without the completion of a command it sent.
#[test]
fn a_stopping_levee_says_bye_only_after_the_command_in_flight() {
    let (mut site, rt, mut client, _) = site_with_session("stop-inflight");
    // A slow server: the NOOP waits for it while levee is told to stop.
    site.stack.freeze_dovecot().expect("SIGSTOP Dovecot");
    let tag = rt.block_on(client.send("NOOP")).expect("send NOOP");
    std::thread::sleep(Duration::from_millis(300));
    let log = site.levee.log_path.clone();
    let (stack, levee) = (&mut site.stack, &mut site.levee);
    let lines = std::thread::scope(|s| {
        let stopping = s.spawn(|| levee.stop());
        wait_for(&log, "shutdown requested");
        std::thread::sleep(Duration::from_millis(500));
        stack.thaw_dovecot().expect("SIGCONT Dovecot");
        let lines = rt.block_on(async {
            let mut lines = Vec::new();
            while let Ok(Ok(line)) =
                tokio::time::timeout(Duration::from_secs(20), client.response()).await
            {
                lines.push(show(&line));
            }
            lines
        });
        stopping.join().expect("levee stopped");
        lines
    });
    let completed = lines
        .iter()
        .position(|l| l.starts_with(&format!("{tag} OK")));
    let bye = lines
        .iter()
        .position(|l| l.starts_with("* BYE [UNAVAILABLE]"));
    assert!(
        matches!((completed, bye), (Some(c), Some(b)) if c < b),
        "the NOOP's completion, then BYE: {lines:?}\n{}",
        tail(&site.levee.log(), 30)
    );
}
