//! levee in-process against a scripted upstream on loopback: the cases a real Postfix will
//! not produce on demand (a 5xx or 4xx after DATA, a connection dropped at the final dot),
//! and PIPELINING.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_config::{Config, ConfigFile};
use levee_journal::{DeliveryStatus, Journal, JournalOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the scripted upstream answers to the final dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject,
    Defer,
    Hangup,
}

/// The upstream's behaviour is chosen by the message's Subject, so that the delivery
/// worker's retries (which race the test) cannot take a verdict meant for another message.
#[derive(Debug, Default)]
struct Script {
    /// Subjects answered badly once each: (subject, verdict on first sight).
    first_time: Vec<(String, Verdict)>,
    delivered: Vec<String>,
    commands: Vec<String>,
}

async fn fake_upstream(script: Arc<Mutex<Script>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_fake(stream, script.clone()));
        }
    });
    addr
}

async fn serve_fake(stream: TcpStream, script: Arc<Mutex<Script>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        script
            .lock()
            .unwrap()
            .commands
            .push(line.trim_end().to_string());
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-fake\r\n250-PIPELINING\r\n250-XCLIENT ADDR PORT HELO LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("XCLIENT") {
            b"220 fake ESMTP again\r\n"
        } else if upper.starts_with("RCPT TO:<UNKNOWN") {
            b"550 5.1.1 unknown user\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go\r\n").await.unwrap();
            let mut body = Vec::new();
            while !body.ends_with(b"\r\n.\r\n") {
                let mut byte = [0u8; 1];
                if lines.read_exact(&mut byte).await.is_err() {
                    return;
                }
                body.push(byte[0]);
            }
            let verdict = {
                let mut script = script.lock().unwrap();
                let text = String::from_utf8_lossy(&body).into_owned();
                let verdict = if text.contains("Subject: reject") {
                    Verdict::Reject
                } else if let Some(i) = script
                    .first_time
                    .iter()
                    .position(|(subject, _)| text.contains(&format!("Subject: {subject}\r\n")))
                {
                    script.first_time.remove(i).1
                } else {
                    Verdict::Accept
                };
                if verdict == Verdict::Accept {
                    script
                        .delivered
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                verdict
            };
            match verdict {
                Verdict::Accept => b"250 2.0.0 Ok: queued as FAKE1\r\n",
                Verdict::Reject => b"554 5.7.1 spam detected\r\n",
                Verdict::Defer => b"451 4.3.0 try later\r\n",
                Verdict::Hangup => return,
            }
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 2.0.0 Ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

struct Levee {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), levee_proxy::RunError>>,
    dir: tempfile::TempDir,
}

async fn start_levee(upstream: SocketAddr) -> Levee {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\ndata_dir = \"{}\"\n[upstream.primary]\nsmtp = \"{upstream}\"\n[smtp]\nhostname = \"levee.test\"\nlocal_domains = [\"example.test\"]\n[[smtp.listen]]\naddr = \"127.0.0.1:0\"\nkind = \"relay\"\ntls = \"none\"\n[delivery]\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\nunconfirmed_wait = \"1s\"\n",
        dir.path().display()
    );
    let config = Config::from_toml(&text).unwrap();
    let shutdown = CancellationToken::new();
    let (ready, bound) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(levee_proxy::run(config, shutdown.clone(), Some(ready)));
    let bound = bound.await.unwrap();
    Levee {
        addr: bound.smtp[0],
        shutdown,
        task,
        dir,
    }
}

impl Levee {
    async fn stop(self) -> (Journal, tempfile::TempDir) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        let journal =
            Journal::open(&self.dir.path().join("journal"), JournalOptions::default()).unwrap();
        (journal, self.dir)
    }
}

/// Sends `input` in one write and reads until `replies` reply lines (final lines) arrived.
async fn converse(addr: SocketAddr, input: &str, replies: usize) -> Vec<String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut got = Vec::new();
    let mut line = String::new();
    lines.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    write.write_all(input.as_bytes()).await.unwrap();
    while got.len() < replies {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        if n == 0 {
            break;
        }
        if line.as_bytes().get(3) == Some(&b' ') {
            got.push(line.trim_end().to_string());
        }
    }
    got
}

fn tx(subject: &str) -> String {
    format!(
        "EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: {subject}\r\nMessage-ID: <m@x>\r\n\r\n..dot line\r\n.\r\nQUIT\r\n"
    )
}

#[tokio::test]
async fn pipelined_transaction_is_relayed_with_xclient_and_journaled() {
    let script = Arc::new(Mutex::new(Script::default()));
    let levee = start_levee(fake_upstream(script.clone()).await).await;
    let replies = converse(levee.addr, &tx("t"), 6).await;
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    assert_eq!(replies[1], "250 2.0.0 Ok");
    assert_eq!(replies[3], "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(replies[4], "250 2.0.0 Ok: queued as L1");
    assert!(replies[5].starts_with("221"));
    {
        let script = script.lock().unwrap();
        assert!(
            script
                .commands
                .iter()
                .any(|c| c.starts_with("XCLIENT ADDR=127.0.0.1 PORT="))
        );
        // After XCLIENT the upstream session restarts with the client's own EHLO name.
        let xclient = script
            .commands
            .iter()
            .position(|c| c.starts_with("XCLIENT"))
            .unwrap();
        assert_eq!(
            script.commands[xclient + 1],
            "EHLO c.test",
            "{:?}",
            script.commands
        );
        // One trace header naming record 1, then the client's bytes with dot-stuffing
        // restored on the way out.
        assert_eq!(script.delivered.len(), 1);
        let delivered = &script.delivered[0];
        assert!(
            delivered.starts_with(
                "Received: from c.test ([127.0.0.1])\r\n\tby levee.test (levee) with ESMTP id L1."
            ),
            "{delivered}"
        );
        assert!(
            delivered.ends_with("\r\nSubject: t\r\nMessage-ID: <m@x>\r\n\r\n..dot line\r\n.\r\n"),
            "{delivered}"
        );
        assert_eq!(delivered.matches("Received:").count(), 1, "{delivered}");
    }
    // A second session skips the probing EHLO: XCLIENT support is known by now.
    let replies = converse(levee.addr, &tx("t2"), 6).await;
    assert_eq!(replies[4], "250 2.0.0 Ok: queued as L2");
    {
        let script = script.lock().unwrap();
        let count = |prefix: &str| {
            script
                .commands
                .iter()
                .filter(|c| c.starts_with(prefix))
                .count()
        };
        assert_eq!(count("EHLO levee.test"), 1, "{:?}", script.commands);
        assert_eq!(count("XCLIENT"), 2, "{:?}", script.commands);
        assert_eq!(count("EHLO c.test"), 2, "{:?}", script.commands);
    }
    let (journal, _dir) = levee.stop().await;
    assert_eq!(
        journal.state(1).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
}

#[tokio::test]
async fn upstream_verdicts_after_data_are_honoured() {
    let script = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().first_time = vec![
        ("defer".into(), Verdict::Defer),
        ("hangup".into(), Verdict::Hangup),
    ];
    let levee = start_levee(fake_upstream(script.clone()).await).await;

    // 5xx after DATA: the client hears the server's refusal; nothing is acknowledged.
    let replies = converse(levee.addr, &tx("reject"), 6).await;
    assert_eq!(replies[4], "554 5.7.1 spam detected");
    // 4xx after DATA: levee has it durably, so 250, and the worker delivers it later.
    let replies = converse(levee.addr, &tx("defer"), 6).await;
    assert!(
        replies[4].starts_with("250 2.0.0 Ok: queued as L2 (stored"),
        "{replies:?}"
    );
    // Connection dropped at the final dot: the same (the server may have queued it: the
    // retry waits `unconfirmed_wait` for that copy first).
    let replies = converse(levee.addr, &tx("hangup"), 6).await;
    assert!(
        replies[4].starts_with("250 2.0.0 Ok: queued as L3 (stored"),
        "{replies:?}"
    );
    // Unknown user: the upstream's verdict, and no transaction without recipients.
    let replies = converse(
        levee.addr,
        "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<unknown@example.test>\r\nDATA\r\nQUIT\r\n",
        5,
    )
    .await;
    assert_eq!(replies[2], "550 5.1.1 unknown user");
    assert!(replies[3].starts_with("554 5.5.1"), "{replies:?}");

    // The retries deliver L2 and L3 exactly once each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while script.lock().unwrap().delivered.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retries did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(script.lock().unwrap().delivered.len(), 2);
    let (journal, _dir) = levee.stop().await;
    assert_eq!(
        journal.state(1).unwrap().unwrap().status,
        DeliveryStatus::Rejected
    );
    assert_eq!(
        journal.state(2).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
    assert_eq!(
        journal.state(3).unwrap().unwrap().status,
        DeliveryStatus::Delivered
    );
}
