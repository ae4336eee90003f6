//! A mail server that takes a message's final dot and breaks the connection before its
//! verdict may have queued the message. levee marks the record, and sends its own copy
//! only after `delivery.unconfirmed_wait` (not at its next retry, which comes far sooner):
//! a queued copy that arrives meanwhile must not be joined by a second one. Without a
//! master user levee cannot look into the mailbox, so after the wait it sends.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use levee_config::{Config, ConfigFile};
use levee_journal::{DeliveryStatus, Journal, JournalOptions};

const WAIT: Duration = Duration::from_secs(3);

/// A mail server whose first transaction ends, after the final dot, in a dropped
/// connection; later ones get 250. Returns when each final dot arrived.
fn unconfirming_mail_server() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dots = Arc::new(Mutex::new(Vec::new()));
    let seen = dots.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    (addr, dots)
}

fn serve(stream: TcpStream, dots: &Mutex<Vec<Instant>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 fake ESMTP\r\n");
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let verb = String::from_utf8_lossy(&line)
            .get(..4)
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-fake\r\n250 8BITMIME\r\n",
            "DATA" => {
                let _ = writer.write_all(b"354 go ahead\r\n");
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                let first = {
                    let mut dots = dots.lock().unwrap();
                    dots.push(Instant::now());
                    dots.len() == 1
                };
                if first {
                    // Queued, perhaps; the verdict never leaves.
                    return;
                }
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 bye\r\n");
                return;
            }
            _ => b"250 ok\r\n",
        };
        if writer.write_all(reply).is_err() {
            return;
        }
    }
}

fn send(relay: SocketAddr) -> String {
    let stream = TcpStream::connect(relay).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut last = String::new();
    for line in [
        "",
        "EHLO client.test\r\n",
        "MAIL FROM:<a@example.org>\r\n",
        "RCPT TO:<x@example.test>\r\n",
        "DATA\r\n",
        "Subject: unconfirmed\r\nMessage-ID: <unconfirmed@example.org>\r\n\r\nhi\r\n.\r\n",
    ] {
        writer.write_all(line.as_bytes()).unwrap();
        loop {
            last.clear();
            reader.read_line(&mut last).unwrap();
            if last.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
    }
    last
}

#[test]
fn a_copy_the_mail_server_did_not_confirm_is_not_sent_again_before_the_wait() {
    let (upstream, dots) = unconfirming_mail_server();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nid = \"unconfirmed\"\ndata_dir = \"{}\"\n\n[upstream.primary]\nsmtp = \"{upstream}\"\n\n\
         [smtp]\nhostname = \"levee.test\"\nlocal_domains = [\"example.test\"]\n\n\
         [[smtp.listen]]\naddr = \"127.0.0.1:0\"\nkind = \"relay\"\ntls = \"none\"\n\n\
         [delivery]\nretry_initial = \"200ms\"\nretry_max = \"500ms\"\nunconfirmed_wait = \"{}s\"\n",
        dir.path().join("data").display(),
        WAIT.as_secs()
    );
    let config = Config::from_toml(&text).expect("valid config");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready, bound) = tokio::sync::oneshot::channel();
    let levee = runtime.spawn(levee_proxy::run(config, shutdown.clone(), Some(ready)));
    let relay = runtime.block_on(bound).expect("levee started").smtp[0];

    let verdict = send(relay);
    assert!(
        verdict.starts_with("250 2.0.0 Ok: queued as L1"),
        "{verdict}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while dots.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "levee never sent its own copy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dots = dots.lock().unwrap().clone();
    let apart = dots[1] - dots[0];
    assert!(
        apart >= WAIT - Duration::from_millis(100),
        "the second copy came {apart:?} after the unconfirmed one, before the {WAIT:?} wait"
    );
    shutdown.cancel();
    runtime.block_on(levee).unwrap().expect("levee ran");
    drop(runtime);
    let journal =
        Journal::open(&dir.path().join("data/journal"), JournalOptions::default()).unwrap();
    let state = journal.state(1).unwrap().expect("a delivery state");
    assert_eq!(state.status, DeliveryStatus::Delivered, "{state:?}");
    assert_eq!(
        journal.unconfirmed_len(),
        0,
        "the mark outlived the delivery"
    );
}
