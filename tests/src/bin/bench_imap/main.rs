//! `bench-imap`: what levee costs an IMAP client and how fast it moves sessions, in one
//! invocation.
//!
//! ```text
//! cargo run --release -p levee-tests --bin bench-imap -- [--rounds 3] [--commands 2000]
//!     [--sessions 1000] [--smtp-sessions 1000] [--only sessions] [--write BENCHMARKS.md]
//! ```
//!
//! 1. Round trips ([`latency`]): NOOP and `UID FETCH 1 (FLAGS)` on one logged-in INBOX,
//!    straight to Dovecot and through levee (plain, and implicit TLS), alternating rounds.
//! 2. Failover time ([`failover`]): default `[failover]` settings, the primary's Dovecot
//!    killed (its whole process group); from the kill to the first NOOP answered OK on a
//!    connection opened before it. A fresh site pair per round.
//! 3. Many idle sessions ([`sessions`]): levee's RSS before and after opening `--sessions`
//!    sessions in IDLE (TLS, then plain) and `--smtp-sessions` SMTP sessions
//!    ([`smtp_held`]), then the kill: until levee has moved them all, and until each has
//!    seen a message delivered after the move.
//!
//! `--only sessions` runs the third phase alone (for thousands of sessions) and writes a
//! section of its own, after the IMAP one. The bench raises its limit on open files when
//! the sessions need more ([`limits`]), before it starts anything.
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
mod limits;
mod moves;
mod report;
mod report_sessions;
mod sessions;
mod smtp_held;

const AS_LEVEE: &str = "BENCH_IMAP_AS_LEVEE";
/// The BENCHMARKS.md section of a full run.
const SECTION: &str = "imap";
/// The BENCHMARKS.md section of `--only sessions`, placed after [`SECTION`].
const SCALE_SECTION: &str = "imap-scale";
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
    /// SMTP sessions held through levee's relay listener in the many-sessions phase (0:
    /// none).
    #[arg(long, default_value_t = 1000)]
    smtp_sessions: usize,
    /// levee's `[imap] hibernate_after` in the many-sessions phase (e.g. `1s`): the
    /// sessions hibernate before they are measured and moved. Without it, levee's default
    /// (30 s) lets them all move awake.
    #[arg(long)]
    hibernate_after: Option<String>,
    /// Run this phase only (its own section with `--write`).
    #[arg(long, value_enum)]
    only: Option<Phase>,
    /// Rewrite the IMAP section of this markdown file (e.g. BENCHMARKS.md); with
    /// `--only sessions`, the section of that phase.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// A phase that runs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Many idle sessions: memory and migration, and the SMTP sessions held.
    Sessions,
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

/// Lets plaintext LOGIN through levee's STARTTLS listener (loopback only), puts the
/// harness's short IMAP timeouts back to levee's defaults and lifts the limits per client
/// address (every client is 127.0.0.1), restarting levee.
fn allow_plaintext(site: &mut Site) {
    site.levee
        .reconfigure(|text| limits::levee_config_edited(text, 1, None));
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
    let files = limits::raise_open_files(limits::files_needed(
        a.sessions,
        a.smtp_sessions,
        a.hibernate_after.is_some(),
    ))?;
    eprintln!("open files limit: {files}");
    let (started, load_before) = (Instant::now(), levee_tests::bench::load_average());
    let rt = runtime()?;
    if a.only == Some(Phase::Sessions) {
        eprintln!("{} idle sessions: {} rounds", a.sessions, a.rounds);
        let many = sessions::run(&a, &rt)?;
        let took = (load_before, started.elapsed());
        let text = report_sessions::scale_report(&a, &many, files, took);
        println!("{text}");
        if let Some(path) = &a.write {
            write_section(path, SCALE_SECTION, Some(SECTION), &text)?;
            eprintln!("wrote the bench-imap-scale section of {}", path.display());
        }
        return Ok(());
    }
    eprintln!(
        "round trips: {} rounds of {} commands",
        a.rounds, a.commands
    );
    let lat = latency::run(&a)?;
    eprintln!("failover time: {} rounds", a.rounds);
    let fo = failover::run(&a, &rt)?;
    eprintln!("{} idle sessions: {} rounds", a.sessions, a.rounds);
    let many = sessions::run(&a, &rt)?;
    let text = report::report(
        &a,
        &lat,
        &fo,
        &many,
        files,
        (load_before, started.elapsed()),
    );
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
