//! A mail server in a thread, for tests that must see exactly what levee hands over, or
//! make the hand-over fail at one precise place. It accepts every command (and offers no
//! XCLIENT), and keeps each transaction it received.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the server saw of one transaction.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The MAIL command line.
    pub mail: String,
    /// The message as received, dot-stuffing undone.
    pub data: Vec<u8>,
    /// When its final dot arrived.
    pub at: Instant,
}

/// How the server ends a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdicts {
    /// 250 to every message.
    Accept,
    /// The first message's final dot is followed by a dropped connection, no verdict (a
    /// server that may have queued it); 250 to the others.
    DropFirst,
}

/// A running fake mail server.
#[derive(Debug, Clone)]
pub struct FakeMta {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeMta {
    pub fn start(verdicts: Verdicts) -> FakeMta {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake mail server");
        let addr = listener.local_addr().expect("its address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &log, verdicts));
            }
        });
        FakeMta { addr, seen }
    }

    /// What it has received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Seen>>, verdicts: Verdicts) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 fake ESMTP\r\n");
    let mut mail = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let verb = text.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-fake\r\n250-SIZE 100000\r\n250 8BITMIME\r\n",
            "MAIL" => {
                mail = text.trim_end().to_string();
                b"250 ok\r\n"
            }
            "DATA" => {
                let _ = writer.write_all(b"354 go ahead\r\n");
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                let first = {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        mail: mail.clone(),
                        data,
                        at: Instant::now(),
                    });
                    log.len() == 1
                };
                if first && verdicts == Verdicts::DropFirst {
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

/// levee in this process with a relay listener in front of a [`FakeMta`]: its journal in a
/// directory of its own, `extra` TOML appended to the configuration.
#[derive(Debug)]
pub struct InFront {
    pub relay: SocketAddr,
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), levee_proxy::RunError>>,
}

impl FakeMta {
    pub fn levee_in_front(&self, name: &str, extra: &str) -> InFront {
        use levee_config::ConfigFile;
        let dir = tempfile::tempdir().expect("levee's directory");
        let text = format!(
            "[node]\nid = \"{name}\"\ndata_dir = \"{}\"\n\n[upstream.primary]\nsmtp = \"{}\"\n\n\
             [smtp]\nhostname = \"levee.test\"\nlocal_domains = [\"example.test\"]\n\n\
             [[smtp.listen]]\naddr = \"127.0.0.1:0\"\nkind = \"relay\"\ntls = \"none\"\n{extra}",
            dir.path().join("data").display(),
            self.addr
        );
        let config = levee_config::Config::from_toml(&text).expect("valid config");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (ready, bound) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(levee_proxy::run(config, shutdown.clone(), Some(ready)));
        let relay = runtime.block_on(bound).expect("levee started").smtp[0];
        InFront {
            relay,
            dir,
            runtime,
            shutdown,
            task,
        }
    }
}

impl InFront {
    /// Stops levee and opens its journal.
    pub fn stop(self) -> (levee_journal::Journal, tempfile::TempDir) {
        self.shutdown.cancel();
        self.runtime
            .block_on(self.task)
            .expect("levee task")
            .expect("levee ran");
        drop(self.runtime);
        let journal = levee_journal::Journal::open(
            &self.dir.path().join("data/journal"),
            levee_journal::JournalOptions::default(),
        )
        .expect("open the journal");
        (journal, self.dir)
    }
}
