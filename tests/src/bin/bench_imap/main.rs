//! `bench-imap`: what levee costs an IMAP client and how fast it moves sessions, in one
//! invocation.
//!
//! ```text
//! cargo run --release -p levee-tests --bin bench-imap -- [--rounds 3] [--commands 2000]
//!     [--sessions 1000] [--write BENCHMARKS.md]
//! ```
//!
//! 1. Round trips ([`latency`]): NOOP and `UID FETCH 1 (FLAGS)` on one logged-in INBOX,
//!    straight to Dovecot and through levee (plain, and implicit TLS), alternating rounds.
//! 2. Failover time ([`failover`]): default `[failover]` settings, the primary's Dovecot
//!    killed (its whole process group); from the kill to the first NOOP answered OK on a
//!    connection opened before it. A fresh site pair per round.
//! 3. Many idle sessions ([`sessions`]): levee's RSS before and after opening `--sessions`
//!    sessions in IDLE (plain, then TLS), then the kill: until levee has moved them all, and
//!    until each has seen a message delivered after the move.
//!
//! Sites are the test harness's ([`Site`], [`ReplicaSite`]): real Postfix and Dovecot in
//! benchmark mode, levee as a child process. The child is this binary run again (with
//! `LEVEE_BIN` pointing at it and `BENCH_IMAP_AS_LEVEE=1` it runs `levee_proxy::cli::main()`,
//! the `levee` binary's entry point), so it is always built from the same sources.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use levee_proxy::mailstack::MailStack;
use levee_tests::bench::write_section;
use levee_tests::load::{SmtpSession, message};
use levee_tests::{LeveeMode, ReplicaSite, Site, spec_with_users};

mod failover;
mod latency;
mod report;
mod sessions;

const AS_LEVEE: &str = "BENCH_IMAP_AS_LEVEE";
const SECTION: &str = "imap";
/// Sessions per user in the many-sessions phase (users `user01`, ... share them out).
const SESSIONS_PER_USER: usize = 10;

/// IMAP latency, failover time, session migration and memory, direct vs levee (run as root).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Rounds of every phase (figures are medians over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed commands per path, command and round in the round-trip phase.
    #[arg(long, default_value_t = 2000)]
    commands: usize,
    /// Idle sessions opened (and moved) per round in the many-sessions phase.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Sessions logging in at once while they are opened.
    #[arg(long, default_value_t = 50)]
    parallel: usize,
    /// Rewrite the IMAP section of this markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// The client side's runtime: two workers, like the machine's two cores.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A primary site (levee in front, failing over with default settings) and its replica,
/// each with `users` extra users; alice has one message at both sites.
fn site_pair(name: &str, users: usize) -> Result<(Site, ReplicaSite)> {
    let replica = ReplicaSite::start_spec(
        spec_with_users(&format!("{name}-r"), users),
        LeveeMode::Child,
    );
    let primary = Site::start_spec(
        spec_with_users(&format!("{name}-p"), users),
        LeveeMode::Child,
        &replica.primary_extra(""),
    );
    deliver(&primary, &["alice".to_string()], &format!("{name}-first"))?;
    let id = [format!("{name}-first-alice@bench.example.org")];
    primary.wait_for_messages("alice", &id, 30);
    replica.wait_for_messages("alice", &id, 30);
    Ok((primary, replica))
}

/// One message to each of `users` through levee's relay listener, Message-ID
/// `<{prefix}-{user}@bench.example.org>`.
fn deliver(site: &Site, users: &[String], prefix: &str) -> Result<()> {
    let mut smtp = SmtpSession::connect(site.levee.ports.relay).context("SMTP to levee")?;
    for user in users {
        let body = message(&format!("{prefix}-{user}@bench.example.org"), 1024);
        let to = format!("{user}@example.test");
        smtp.transfer("bench@example.org", &to, &body)
            .with_context(|| format!("delivering to {to}"))?;
    }
    Ok(())
}

/// Lets plaintext LOGIN through levee's STARTTLS listener (loopback only) and puts the
/// harness's short IMAP timeouts back to levee's defaults, restarting levee.
fn allow_plaintext(site: &mut Site) {
    site.levee.reconfigure(imap_section_edited);
}

/// The `[imap]` section with `allow_plaintext_auth = true` and no `*_timeout` keys.
fn imap_section_edited(text: &str) -> String {
    let head = text
        .find("[imap]\n")
        .expect("levee's config has an [imap] section");
    let body = head + "[imap]\n".len();
    let end = text[body..]
        .find("\n[")
        .map_or(text.len(), |i| body + i + 1);
    let kept: String = text[body..end]
        .lines()
        .filter(|line| !line.contains("_timeout"))
        .map(|line| format!("{line}\n"))
        .collect();
    format!(
        "{}[imap]\nallow_plaintext_auth = true\n{kept}{}",
        &text[..head],
        &text[end..]
    )
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of `pid`, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum()
}

/// The soft limit on open files of this process (inherited by levee).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

/// Kills the primary's Dovecot (SIGKILL of its process group, until IMAP refuses); returns
/// when the kill began.
fn kill_primary_dovecot(stack: &mut MailStack) -> Result<Instant> {
    let killed = Instant::now();
    stack
        .kill_dovecot()
        .context("killing the primary's Dovecot")?;
    Ok(killed)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench() -> Result<()> {
    let a = <Args as clap::Parser>::parse();
    ensure!(
        a.rounds > 0 && a.commands > 0 && a.sessions > 0,
        "nothing to measure"
    );
    levee_proxy::mailstack::check_installed()?;
    // The bench holds two client sockets per session (plain and TLS sets), levee four.
    let need = 4 * a.sessions as u64 + 512;
    let have = open_files_limit();
    ensure!(
        have >= need,
        "open files limit {have} is below the {need} needed for {} sessions: raise it (ulimit -n {need})",
        a.sessions
    );
    let (started, load_before) = (Instant::now(), levee_tests::bench::load_average());
    let rt = runtime()?;
    eprintln!(
        "round trips: {} rounds of {} commands",
        a.rounds, a.commands
    );
    let lat = latency::run(&a)?;
    eprintln!("failover time: {} rounds", a.rounds);
    let fo = failover::run(&a, &rt)?;
    eprintln!("{} idle sessions: {} rounds", a.sessions, a.rounds);
    let many = sessions::run(&a, &rt)?;
    let text = report::report(&a, &lat, &fo, &many, (load_before, started.elapsed()));
    println!("{text}");
    if let Some(path) = &a.write {
        write_section(path, SECTION, Some("replication"), &text)?;
        eprintln!("wrote the bench-imap section of {}", path.display());
    }
    Ok(())
}

/// Runs this binary again with `LEVEE_BIN` pointing at itself, so that the harness starts
/// levee children from it.
fn again_as_levee_bin() -> ExitCode {
    let run = || -> Result<std::process::ExitStatus> {
        let exe = std::env::current_exe()?;
        Ok(Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("LEVEE_BIN", &exe)
            // levee's default level, as in production (the harness logs at trace).
            .env("LEVEE_LOG", "info")
            .env(AS_LEVEE, "1")
            .status()?)
    };
    match run() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-imap: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let daemon = std::env::args().nth(1);
    if std::env::var_os(AS_LEVEE).is_some() && matches!(daemon.as_deref(), Some("run" | "replica"))
    {
        return levee_proxy::cli::main();
    }
    if std::env::var_os("LEVEE_BIN").is_none() {
        return again_as_levee_bin();
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-imap: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn imap_section_edit_keeps_the_rest() {
        let text = "[smtp]\nconnect_timeout = \"2s\"\n\n[imap]\nlogin_timeout = \"10s\"\nconnect_timeout = \"2s\"\n\n[[imap.listen]]\naddr = \"x\"\n";
        assert_eq!(
            super::imap_section_edited(text),
            "[smtp]\nconnect_timeout = \"2s\"\n\n[imap]\nallow_plaintext_auth = true\n\n[[imap.listen]]\naddr = \"x\"\n"
        );
    }
}
