//! End-to-end harness: real Postfix and Dovecot, levee in front, clients nobody on the
//! project wrote (Python's smtplib and imaplib).
//!
//! # Layout
//! - [`Site`]: one mail stack plus its levee, started on free loopback ports, torn down on
//!   drop (also when a test panics).
//! - [`levee`]: levee in-process (fast, for most tests) or as a child process (for `kill -9`).
//! - [`clients`]: the Python clients, returning their JSON verdicts.
//! - [`load`]: a Rust SMTP load client (exact per-message timestamps) and a kept-alive
//!   HTTP client for levee's `/metrics` and `/status`, for benchmarks.
//! - [`imap_load`]: a Rust IMAP client for many concurrent sessions (IDLE, plain or TLS).
//! - [`tally`]: acknowledged messages counted in Maildirs and journals; polling with a deadline.
//!
//! A missing Postfix or Dovecot is a loud failure, never a skip: every test calls
//! [`Site::start`], which panics with the install command when they are absent.

pub mod admin;
pub mod bench;
pub mod clients;
pub mod fake_mta;
pub mod imap_load;
pub mod imap_steps;
pub mod levee;
pub mod load;
pub mod pair;
pub mod tally;

use std::path::{Path, PathBuf};

use levee_journal::{Journal, JournalOptions, Record, RecordKind};
use levee_proxy::mailstack::{MailStack, StackSpec};

pub use levee::{Daemon, Levee, LeveeMode, ReplicaLink};

/// A mail stack with levee in front of it.
#[derive(Debug)]
pub struct Site {
    pub stack: MailStack,
    pub levee: Levee,
    /// levee's own files: config, certificate, journal, log.
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Starts Postfix + Dovecot and levee (in-process) in front of them.
    pub fn start(name: &str) -> Site {
        Site::start_with(name, LeveeMode::InProcess, "")
    }

    /// As [`Site::start`], with levee run as `mode` and `extra` TOML appended to its config.
    pub fn start_with(name: &str, mode: LeveeMode, extra: &str) -> Site {
        let (stack, dir) = start_stack(name);
        let levee = Levee::start(mode, dir.path(), &stack, extra);
        Site { stack, levee, dir }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("data/journal")
    }

    /// Opens the journal; levee must be stopped (sled allows one process).
    pub fn open_journal(&self) -> Journal {
        Journal::open(&self.journal_dir(), JournalOptions::default()).expect("open journal")
    }

    /// Every message record in the journal.
    pub fn journal_records(&self) -> Vec<Record> {
        let journal = self.open_journal();
        let records = journal.read_from(1, usize::MAX).expect("read journal");
        records
            .into_iter()
            .filter(|r| matches!(r.kind, RecordKind::Message(_)))
            .collect()
    }

    /// Messages in `user`'s INBOX read over IMAP with imaplib.
    pub fn imap_messages(&self, user: &str) -> Vec<Vec<u8>> {
        let password = self.password(user);
        clients::imap_fetch(self.stack.imap_addr(), user, &password)
    }

    pub fn password(&self, user: &str) -> String {
        password_of(&self.stack, user)
    }

    /// Waits until `user`'s Maildir holds a message containing each of `needles`.
    pub fn wait_for_messages(&self, user: &str, needles: &[String], secs: u64) -> Vec<Vec<u8>> {
        wait_for_messages(&self.stack, user, needles, secs)
    }

    /// Waits (at most 20 s) until levee's metric `name` is at least `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: f64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.levee.metric(name).unwrap_or(0.0) < at_least {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never reached {at_least}\n{}",
                tail(&self.levee.log(), 40)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends a sample message for each Message-ID in `ids` to `rcpt` through levee's
    /// relay listener (each must get 250), and waits until `user` has them all.
    pub fn send_through_levee(&self, ids: &[&str], rcpt: &str, user: &str) -> Vec<String> {
        for id in ids {
            let verdict = send_sample(self.dir.path(), self.levee.ports.relay, id, rcpt);
            assert_eq!(verdict["code"], 250, "{id}: {verdict}");
        }
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.wait_for_messages(user, &ids, 20);
        ids
    }
}

/// The replica site: its own mail stack and `levee replica` applying to it.
#[derive(Debug)]
pub struct ReplicaSite {
    pub stack: MailStack,
    pub daemon: Levee,
    /// What a primary needs to stream here.
    pub link: ReplicaLink,
    pub dir: tempfile::TempDir,
}

impl ReplicaSite {
    pub fn start(name: &str, mode: LeveeMode) -> ReplicaSite {
        let (stack, dir) = start_stack(name);
        let (daemon, link) = Levee::start_replica(mode, dir.path(), &stack);
        ReplicaSite {
            stack,
            daemon,
            link,
            dir,
        }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("data/journal")
    }

    /// Opens the replica's journal; the daemon must be stopped.
    pub fn open_journal(&self) -> Journal {
        Journal::open(&self.journal_dir(), JournalOptions::default()).expect("open journal")
    }

    pub fn wait_for_messages(&self, user: &str, needles: &[String], secs: u64) -> Vec<Vec<u8>> {
        wait_for_messages(&self.stack, user, needles, secs)
    }

    pub fn password(&self, user: &str) -> String {
        password_of(&self.stack, user)
    }
}

/// A fresh mail stack and a directory for the levee beside it.
fn start_stack(name: &str) -> (MailStack, tempfile::TempDir) {
    ensure_mail_servers();
    let stack = MailStack::start(StackSpec::new(name))
        .unwrap_or_else(|err| panic!("cannot start the {name} mail stack: {err}"));
    let dir = tempfile::Builder::new()
        .prefix(&format!("levee-{name}-"))
        .tempdir()
        .expect("temp dir");
    (stack, dir)
}

/// Waits until `user`'s Maildir in `stack` holds a message containing each of `needles`,
/// or panics after `secs` with the mail log.
pub fn wait_for_messages(
    stack: &MailStack,
    user: &str,
    needles: &[String],
    secs: u64,
) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let messages = stack.inbox_messages(user).expect("read maildir");
        let missing: Vec<&String> = needles
            .iter()
            .filter(|n| !messages.iter().any(|m| contains(m, n.as_bytes())))
            .collect();
        if missing.is_empty() {
            return messages;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{} of {} messages never reached {user}'s INBOX (first: {})\npostfix log tail:\n{}\ndovecot log tail:\n{}",
                missing.len(),
                needles.len(),
                missing[0],
                tail(&stack.postfix_log(), 20),
                tail(&stack.dovecot_log(), 20)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sends one sample message with `id` to `rcpt` through `addr` (plain SMTP, no AUTH);
/// returns smtplib's verdict.
pub fn send_sample(
    dir: &Path,
    addr: std::net::SocketAddr,
    id: &str,
    rcpt: &str,
) -> serde_json::Value {
    let file = message_file(dir, &format!("{id}.eml"), &sample_message(id, rcpt));
    clients::smtp_send(
        addr,
        clients::Security::Plain,
        None,
        "sender@example.org",
        &[rcpt],
        &file,
    )
}

/// Installs Postfix, Dovecot and python3 with apt-get on first use when they are missing
/// (a fresh Debian machine), once per test process. Fails loudly when that is impossible:
/// an end-to-end test never skips.
pub fn ensure_mail_servers() {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    if levee_proxy::mailstack::check_installed().is_err() {
        eprintln!("end-to-end tests: installing Postfix and Dovecot with apt-get");
        if let Err(err) = levee_proxy::mailstack::install_with_apt() {
            panic!("end-to-end tests need Postfix and Dovecot and could not install them: {err}");
        }
    }
    if let Err(err) = levee_proxy::mailstack::check_installed() {
        panic!("end-to-end tests need Postfix and Dovecot: {err}");
    }
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if python.is_err() {
        let status = std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "python3"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "end-to-end tests need python3 (apt-get install python3) and could not install it"
        );
    }
    *done = true;
}

/// Writes `body` to a file in `dir` and returns its path.
pub fn message_file(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write message file");
    path
}

/// A CRLF message with the given Message-ID and some content that tempts a proxy to touch
/// it: a leading-dot line, 8-bit text, a long line, trailing spaces.
pub fn sample_message(message_id: &str, to: &str) -> Vec<u8> {
    let long_line = "x".repeat(900);
    format!(
        "Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nFrom: Bob <bob@example.org>\r\nTo: <{to}>\r\nSubject: kidney offer {message_id}\r\nMessage-ID: <{message_id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nOrgan offer, reply within the hour.  \r\n.a line that starts with a dot\r\n..two dots\r\nGr\u{fc}\u{df}e aus K\u{f6}ln\r\n{long_line}\r\n\r\n-- \r\ncoordinator\r\n"
    )
    .into_bytes()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The value of the unlabelled sample `name` in Prometheus exposition `text`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
}

/// `StackSpec::new(name)` plus `count` users `user01`, `user02`, ... (passwords `user01-pw`,
/// ...), with Dovecot tuned for many concurrent sessions (`benchmark_mode`).
pub fn spec_with_users(name: &str, count: usize) -> StackSpec {
    let mut spec = StackSpec::new(name);
    spec.users
        .extend((1..=count).map(|i| (format!("user{i:02}"), format!("user{i:02}-pw"))));
    spec.benchmark_mode = true;
    spec
}

impl Site {
    /// As [`Site::start_with`], on a mail stack built from `spec`.
    pub fn start_spec(spec: StackSpec, mode: LeveeMode, extra: &str) -> Site {
        let (stack, dir) = start_stack_spec(spec);
        let levee = Levee::start(mode, dir.path(), &stack, extra);
        Site { stack, levee, dir }
    }

    /// The certificate levee presents to clients (names `localhost` and `levee.test`).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

impl ReplicaSite {
    /// As [`ReplicaSite::start`], on a mail stack built from `spec`.
    pub fn start_spec(spec: StackSpec, mode: LeveeMode) -> ReplicaSite {
        let (stack, dir) = start_stack_spec(spec);
        let (daemon, link) = Levee::start_replica(mode, dir.path(), &stack);
        ReplicaSite {
            stack,
            daemon,
            link,
            dir,
        }
    }

    /// The `extra` config of a primary that streams here (async) and fails over to this
    /// site's servers; `failover` is the `[failover]` section, empty for the defaults.
    pub fn primary_extra(&self, failover: &str) -> String {
        format!(
            "{}\n[upstream.replica]\nsmtp = \"{}\"\nimap = \"{}\"\n{failover}",
            self.link.primary_section("async", "2s"),
            self.stack.smtp_addr(),
            self.stack.imap_addr()
        )
    }
}

/// `user`'s password in `stack`.
fn password_of(stack: &MailStack, user: &str) -> String {
    stack
        .users()
        .iter()
        .find(|(name, _)| name == user)
        .map(|(_, password)| password.clone())
        .unwrap_or_else(|| panic!("no user {user} in the stack"))
}

/// A mail stack built from `spec`, and a scratch directory beside it; fails loudly when
/// Postfix or Dovecot is missing.
pub fn start_stack_spec(spec: StackSpec) -> (MailStack, tempfile::TempDir) {
    ensure_mail_servers();
    let name = spec.name.clone();
    let stack = MailStack::start(spec)
        .unwrap_or_else(|err| panic!("cannot start the {name} mail stack: {err}"));
    let dir = tempfile::Builder::new()
        .prefix(&format!("levee-{name}-"))
        .tempdir()
        .expect("temp dir");
    (stack, dir)
}
