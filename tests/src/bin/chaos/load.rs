//! Steady load from clients while the faults come: SMTP senders (Python's smtplib, which
//! reports each message the moment it hears 250) and IMAP sessions that idle, wake and
//! check their INBOX over and over, reconnecting when their connection is lost.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use levee_tests::imap_load::{ImapClient, Security};

pub const RCPT: &str = "alice@example.test";

/// How often a sender tries a message again after getting no 250.
pub const RESENDS: u32 = 5;

/// What the SMTP senders saw.
#[derive(Debug, Default)]
pub struct SmtpTally {
    /// Message-IDs whose final dot got 250, in order.
    pub acked: Vec<String>,
    /// Messages that got no 250 (refused, or the connection was lost) after [`RESENDS`]
    /// more tries under the same Message-ID.
    pub failed: usize,
    /// Why, with how often: the error's kind and the server's reply, per distinct text.
    pub reasons: std::collections::BTreeMap<String, usize>,
}

/// smtp_load.py running for a fixed time.
#[derive(Debug)]
pub struct SmtpLoad {
    child: Child,
    reader: JoinHandle<SmtpTally>,
    acked: Arc<AtomicUsize>,
}

impl SmtpLoad {
    /// `threads` senders to [`RCPT`] through `port` for `seconds`, each pausing `pause`
    /// between messages; Message-IDs are `{prefix}-{thread}-{n}@example.org`.
    pub fn start(port: u16, prefix: &str, threads: u32, seconds: u64, pause: Duration) -> Self {
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/smtp_load.py"))
            .args(["--port", &port.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--count", "100000000", "--seconds", &seconds.to_string()])
            .args(["--pause", &pause.as_secs_f64().to_string()])
            .args(["--to", RCPT, "--prefix", prefix])
            // A message that got no 250 goes again under its Message-ID, as from an MTA:
            // levee must answer a resend of what it journaled without a second copy.
            .args(["--resend", &RESENDS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs smtp_load.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let reader = std::thread::spawn(move || {
            let mut tally = SmtpTally::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ACK ") {
                    tally.acked.push(id.to_string());
                    counter.fetch_add(1, Ordering::Relaxed);
                } else if let Some(err) = line.strip_prefix("ERR ") {
                    tally.failed += 1;
                    let reason = err.split_once(' ').map_or(err, |(_, why)| why);
                    *tally.reasons.entry(reason.to_string()).or_default() += 1;
                }
            }
            tally
        });
        SmtpLoad {
            child,
            reader,
            acked,
        }
    }

    /// Messages acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits for the senders' time to run out; what they saw.
    pub fn finish(mut self) -> SmtpTally {
        let status = self.child.wait().expect("smtp_load.py exit");
        assert!(status.success(), "smtp_load.py failed: {status}");
        self.reader.join().expect("load reader")
    }
}

/// What the IMAP sessions saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImapTally {
    pub sessions: usize,
    /// Commands (IDLE, NOOP, FETCH) completed with OK.
    pub commands_ok: u64,
    /// Completions other than OK (NO, BAD): read-only commands must never get one.
    pub errors: Vec<String>,
    /// When a session's connection was lost (levee itself restarting loses them; a mail
    /// server dying behind levee must not).
    #[serde(skip)]
    pub lost_at: Vec<Instant>,
    /// The error each lost connection ended with, in the order of `lost_at`.
    #[serde(skip)]
    pub lost_why: Vec<String>,
    pub logins: u64,
}

/// IMAP sessions over implicit TLS, each: log in, SELECT INBOX, then again and again
/// IDLE for a while, DONE, NOOP, FETCH the newest message's UID.
pub struct ImapLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ImapTally>>,
}

impl ImapLoad {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addr: SocketAddr,
        security: Security,
        user: &str,
        password: &str,
        sessions: usize,
    ) -> ImapLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..sessions)
            .map(|_| {
                let (stop, security) = (stop.clone(), security.clone());
                let (user, password) = (user.to_string(), password.to_string());
                rt.spawn(async move { session(addr, security, &user, &password, &stop).await })
            })
            .collect();
        ImapLoad { stop, tasks }
    }

    pub fn finish(self, rt: &tokio::runtime::Runtime) -> ImapTally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = ImapTally::default();
        for task in self.tasks {
            let one = rt.block_on(task).expect("IMAP load task");
            all.sessions += 1;
            all.commands_ok += one.commands_ok;
            all.errors.extend(one.errors);
            all.lost_at.extend(one.lost_at);
            all.lost_why.extend(one.lost_why);
            all.logins += one.logins;
        }
        all
    }
}

async fn session(
    addr: SocketAddr,
    security: Security,
    user: &str,
    password: &str,
    stop: &AtomicBool,
) -> ImapTally {
    let mut tally = ImapTally::default();
    while !stop.load(Ordering::Relaxed) {
        let opened = async {
            let mut client = ImapClient::connect(addr, &security).await?;
            client.login(user, password).await?;
            client.select("INBOX").await?;
            Ok::<_, std::io::Error>(client)
        }
        .await;
        let Ok(mut client) = opened else {
            // levee restarting (or its listener not up yet): try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tally.logins += 1;
        if let Err(err) = work(&mut client, &mut tally, stop).await {
            tally.lost_at.push(Instant::now());
            tally.lost_why.push(err.to_string());
        }
    }
    tally
}

async fn work(
    client: &mut ImapClient,
    tally: &mut ImapTally,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        client.idle().await?;
        tally.commands_ok += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let done = client.done().await?;
        for command in ["NOOP", "FETCH * (UID)"] {
            let reply = client.command(command).await?;
            if reply.is_ok() {
                tally.commands_ok += 1;
            } else {
                tally.errors.push(format!("{command}: {}", reply.status));
            }
        }
        if !done.is_ok() {
            tally.errors.push(format!("IDLE: {}", done.status));
        }
    }
    Ok(())
}
