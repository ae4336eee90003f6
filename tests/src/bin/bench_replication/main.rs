//! `bench-replication`: replication lag, sync vs async throughput and catch-up, in one
//! invocation.
//!
//! ```text
//! cargo run --release -p levee-tests --bin bench-replication -- [--quick] [--rate 200]
//!     [--seconds 30] [--messages 10000] [--rounds 3] [--backlog 10000] [--write BENCHMARKS.md]
//! ```
//!
//! The primary site is `levee run` in front of `smtp-sink` (so that the primary's own mail
//! server does not eat the two cores this is measured on); the replica site is
//! `levee replica` applying over LMTP to a real Dovecot (a [`MailStack`]). Both daemons are
//! children: this binary re-executed with `BENCH_REPLICATION_AS_LEVEE=1` runs
//! `levee_proxy::cli::main()`, the `levee` binary's entry point.
//!
//! 1. Lag: a steady `--rate` of messages over several reused SMTP sessions (async mode).
//!    Each 250 carries the record's seq (`queued as L<seq>`) and is stamped on the wall
//!    clock. The replica logs every journal group commit (JSON, `levee_journal::commit` at
//!    debug) right after its fdatasync, with the head it made durable: that is when each seq
//!    became durable there, to the microsecond and without polling. The replica journal's
//!    delivery state says when the standby took each message (`updated_ms`, in ms).
//! 2. Throughput: `smtp-source` closed loop against a primary in sync and in async mode,
//!    alternating (ABBA), a fresh daemon pair per run.
//! 3. Catch-up: a backlog journaled while the replica is stopped, then the replica started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use levee_journal::{DeliveryStatus, Journal, JournalOptions};
use levee_proxy::mailstack::{MailStack, StackSpec, free_port};
use levee_tests::load::{self, HttpClient, SmtpSession, wall_clock};
use serde_json::Value;

mod daemons;
mod report;
use daemons::{AS_LEVEE, Commit, Guard, head, wait_caught_up};
use levee_tests::bench::{
    empty_maildir, fs_of, local, median, shell, thousands, wait_listening, write_section,
};

/// Messages sent (and waited for at the replica) before each measurement.
const WARM_UP: u64 = 200;
/// Messages of the standby-alone reference runs.
const LMTP_ALONE: u64 = 500;

/// Replication benchmarks against real Dovecot at the replica site (run as root).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Small figures everywhere (5 s of lag load, 2,000-message runs, 1 round, backlog
    /// 2,000); explicit flags still win.
    #[arg(long)]
    quick: bool,
    /// Lag load: messages per second (default 200).
    #[arg(long)]
    rate: Option<f64>,
    /// Lag load: seconds (default 30).
    #[arg(long)]
    seconds: Option<u64>,
    /// Lag load: SMTP sessions the rate is spread over.
    #[arg(long, default_value_t = 4)]
    lag_sessions: usize,
    /// Throughput: messages per run (default 10,000).
    #[arg(long)]
    messages: Option<u64>,
    /// Throughput: smtp-source sessions.
    #[arg(long, default_value_t = 20)]
    sessions: u32,
    /// Throughput: rounds, each one sync and one async run (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Catch-up: records journaled while the replica is down (default 10,000).
    #[arg(long)]
    backlog: Option<u64>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Rewrite the bench-replication section of this markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// The figures after `--quick` and explicit flags are resolved.
#[derive(Debug, Clone)]
pub(crate) struct Scale {
    rate: f64,
    seconds: u64,
    lag_sessions: usize,
    messages: u64,
    sessions: u32,
    rounds: usize,
    backlog: u64,
    size: usize,
}

impl Args {
    fn scale(&self) -> Scale {
        let q = self.quick;
        Scale {
            rate: self.rate.unwrap_or(200.0),
            seconds: self.seconds.unwrap_or(if q { 5 } else { 30 }),
            lag_sessions: self.lag_sessions,
            messages: self.messages.unwrap_or(if q { 2000 } else { 10_000 }),
            sessions: self.sessions,
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }),
            backlog: self.backlog.unwrap_or(if q { 2000 } else { 10_000 }),
            size: self.size,
        }
    }
}

pub(crate) fn source_args(s: &Scale, n: u64, to: &str) -> String {
    format!(
        "-s {} -l {} -m {n} -d -f bench@example.org -t alice@example.test {to}",
        s.sessions, s.size
    )
}

/// `smtp-source` with connections reused, to completion; returns its wall time.
fn source(s: &Scale, n: u64, addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("/usr/sbin/smtp-source")
        .args(source_args(s, n, &addr.to_string()).split(' '))
        .stdin(Stdio::null())
        .output()
        .context("running /usr/sbin/smtp-source")?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "smtp-source to {addr} failed ({}): {stderr}",
        out.status
    );
    Ok(elapsed)
}

fn maildir_count(stack: &MailStack) -> u64 {
    let dir = stack.maildir("alice");
    ["new", "cur"]
        .iter()
        .map(|d| std::fs::read_dir(dir.join(d)).map_or(0, |r| r.count() as u64))
        .sum()
}

/// Lag phase results: per message, in milliseconds (`durable`, `applied`, `dot_to_250`).
#[derive(Debug, Default)]
pub(crate) struct Lag {
    sent: usize,
    achieved_rate: f64,
    max_late_ms: f64,
    durable: Vec<f64>,
    applied: Vec<f64>,
    dot_to_250: Vec<f64>,
    /// Records per group commit at the replica while the load ran.
    per_commit: f64,
    /// Messages the applier delivered per second (first to last of the load).
    apply_rate: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `a - b` in milliseconds, negative when `a` came first.
fn ms_between(a: Duration, b: Duration) -> f64 {
    ms(a) - ms(b)
}

/// When `seq` became durable at the replica: the first group commit whose head reaches it.
/// `commits` are in log order (one writer thread, heads never go down); `k` is a cursor for
/// ascending `seq`s.
fn durable_at(commits: &[Commit], k: &mut usize, seq: u64) -> Option<Duration> {
    while *k < commits.len() && commits[*k].head < seq {
        *k += 1;
    }
    commits.get(*k).map(|c| c.at)
}

fn lag(s: &Scale, sink: SocketAddr, stack: &MailStack) -> Result<Lag> {
    let mut replica = daemons::replica(stack)?;
    let mut primary = daemons::primary(sink, &replica, "async")?;
    let second = Duration::from_secs(1);
    load::steady(
        primary.listen,
        s.rate,
        second,
        s.lag_sessions,
        s.size,
        "warm",
    )?;
    let base = wait_caught_up(&primary, &replica, 60)?;
    let duration = Duration::from_secs(s.seconds);
    let acked = load::steady(
        primary.listen,
        s.rate,
        duration,
        s.lag_sessions,
        s.size,
        "lag",
    )?;
    wait_caught_up(&primary, &replica, 1200)?;
    primary.stop()?;
    replica.stop()?;
    let commits = replica.commits()?;
    let journal = Journal::open(&replica.journal_dir(), JournalOptions::default())?;
    let (Some(first), Some(last)) = (acked.first(), acked.last()) else {
        bail!("the steady load sent nothing");
    };
    let last_250 = acked.iter().map(|a| a.acked).max().unwrap_or(first.acked);
    // Commits that made some of the load durable (the applier's flushes move no head).
    let during = commits
        .iter()
        .filter(|c| c.head > base && c.head <= last.seq);
    let distinct: std::collections::BTreeSet<u64> = during.map(|c| c.head).collect();
    let mut out = Lag {
        sent: acked.len(),
        achieved_rate: acked.len() as f64 / (last_250 - first.due).as_secs_f64(),
        per_commit: acked.len() as f64 / distinct.len().max(1) as f64,
        ..Lag::default()
    };
    let (mut k, mut applied_ms) = (0, Vec::new());
    for a in &acked {
        let at = durable_at(&commits, &mut k, a.seq);
        let at = at.with_context(|| format!("no commit of seq {} in the replica's log", a.seq))?;
        out.durable.push(ms_between(at, a.acked_wall));
        out.dot_to_250.push(ms(a.acked - a.dot));
        out.max_late_ms = out
            .max_late_ms
            .max(ms(a.started.saturating_duration_since(a.due)));
        let state = journal.state(a.seq)?;
        let state = state.with_context(|| format!("seq {} not at the replica", a.seq))?;
        ensure!(
            state.status == DeliveryStatus::Delivered,
            "seq {} not applied at the replica: {state:?}",
            a.seq
        );
        // updated_ms: the applier's wall clock right after the standby's final reply, in
        // whole ms; take the middle of that millisecond.
        out.applied
            .push(state.updated_ms as f64 + 0.5 - ms(a.acked_wall));
        applied_ms.push(state.updated_ms as f64);
    }
    let span = applied_ms.iter().copied().fold(f64::MIN, f64::max)
        - applied_ms.iter().copied().fold(f64::MAX, f64::min);
    out.apply_rate = (acked.len() - 1) as f64 * 1e3 / span.max(1.0);
    empty_maildir(stack)?;
    Ok(out)
}

/// One closed-loop run against a fresh daemon pair.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    mode: &'static str,
    rate: f64,
    /// Records the replica did not hold yet when the last 250 came.
    behind: u64,
    sync_timeouts: f64,
}

fn throughput_run(
    s: &Scale,
    sink: SocketAddr,
    stack: &MailStack,
    mode: &'static str,
) -> Result<Run> {
    let mut replica = daemons::replica(stack)?;
    let mut primary = daemons::primary(sink, &replica, mode)?;
    source(s, WARM_UP, primary.listen)?;
    wait_caught_up(&primary, &replica, 60)?;
    let elapsed = source(s, s.messages, primary.listen)?;
    let durable = replica.metric("levee_replica_durable_seq")? as u64;
    let head = head(&primary)?;
    ensure!(
        head == WARM_UP + s.messages,
        "{mode}: journal head {head}, sent {}",
        WARM_UP + s.messages
    );
    let run = Run {
        mode,
        rate: s.messages as f64 / elapsed.as_secs_f64(),
        behind: head.saturating_sub(durable),
        sync_timeouts: primary
            .metric("levee_replication_sync_timeouts_total")
            .unwrap_or(0.0),
    };
    primary.stop()?;
    replica.stop()?;
    empty_maildir(stack)?;
    eprintln!("throughput {mode}: {:.0} msg/s", run.rate);
    Ok(run)
}

/// Sync and async runs, `rounds` of each, in ABBA order so that drift hits both alike.
fn throughput(s: &Scale, sink: SocketAddr, stack: &MailStack) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for round in 0..s.rounds {
        let order = if round % 2 == 0 {
            ["sync", "async"]
        } else {
            ["async", "sync"]
        };
        for mode in order {
            runs.push(throughput_run(s, sink, stack, mode)?);
        }
    }
    Ok(runs)
}

#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// From starting the replica process: first backlog record durable, all durable (from
    /// its commit log), all applied (the latest `updated_ms` in its journal).
    first: Duration,
    durable: Duration,
    applied: Duration,
    /// Records in the first group commit of the backlog.
    first_records: u64,
    in_maildir: u64,
    /// The standby alone (see [`lmtp_alone`]): new connection per message, one reused.
    standby: (f64, f64),
}

fn catch_up(s: &Scale, sink: SocketAddr, stack: &MailStack) -> Result<CatchUp> {
    let mut replica = daemons::replica(stack)?;
    let mut primary = daemons::primary(sink, &replica, "async")?;
    source(s, WARM_UP, primary.listen)?;
    let base = wait_caught_up(&primary, &replica, 60)?;
    replica.stop()?;
    primary.wait_connected(false)?;
    empty_maildir(stack)?;
    source(s, s.backlog, primary.listen)?;
    let target = head(&primary)?;
    ensure!(
        target == base + s.backlog,
        "journal head {target} after a backlog of {}",
        s.backlog
    );
    let started = wall_clock();
    replica.start()?;
    // Only to know when it is over; the figures come from the replica's own timestamps.
    let mut http = replica.http();
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let applied = http.metric("levee_replica_applied_seq")?.unwrap_or(0.0) as u64;
        if applied >= target {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "replica applied {applied} of {target} after 1200 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    primary.stop()?;
    replica.stop()?;
    let commits = replica.commits()?;
    let first = commits
        .iter()
        .find(|c| c.head > base)
        .context("no backlog commit")?;
    let all = commits
        .iter()
        .find(|c| c.head >= target)
        .context("no final commit")?;
    let journal = Journal::open(&replica.journal_dir(), JournalOptions::default())?;
    let mut last_applied = 0;
    for seq in base + 1..=target {
        let state = journal
            .state(seq)?
            .with_context(|| format!("seq {seq} missing"))?;
        ensure!(
            state.status == DeliveryStatus::Delivered,
            "seq {seq} not applied: {state:?}"
        );
        last_applied = last_applied.max(state.updated_ms);
    }
    let out = CatchUp {
        first: first.at.saturating_sub(started),
        durable: all.at.saturating_sub(started),
        applied: Duration::from_millis(last_applied + 1).saturating_sub(started),
        first_records: first.head - base,
        in_maildir: maildir_count(stack),
        standby: (0.0, 0.0),
    };
    empty_maildir(stack)?;
    Ok(out)
}

/// The standby alone, as a reference for the applier: messages delivered one after another
/// straight to Dovecot's LMTP, a new connection per message (as the applier does, closing
/// without QUIT) or one connection for all; msg/s.
fn lmtp_alone(s: &Scale, stack: &MailStack, reuse: bool) -> Result<f64> {
    let started = Instant::now();
    let mut session: Option<SmtpSession> = None;
    for i in 0..LMTP_ALONE {
        let mut conn = match session.take() {
            Some(conn) if reuse => conn,
            _ => SmtpSession::connect_lmtp(stack.lmtp_addr())?,
        };
        let body = load::message(&format!("lmtp-{i}@bench.example.org"), s.size);
        conn.transfer("bench@example.org", "alice@example.test", &body)?;
        session = Some(conn);
    }
    let rate = LMTP_ALONE as f64 / started.elapsed().as_secs_f64();
    drop(session);
    ensure!(
        maildir_count(stack) == LMTP_ALONE,
        "LMTP reference: Maildir count is off"
    );
    empty_maildir(stack)?;
    Ok(rate)
}

fn bench() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let s = args.scale();
    levee_proxy::mailstack::check_installed()?;
    let (started, load_before) = (Instant::now(), levee_tests::bench::load_average());
    let addr = local(free_port()?);
    let sink = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &addr.to_string(), "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("spawning /usr/sbin/smtp-sink")?;
    let _sink = Guard(sink);
    wait_listening(addr, "smtp-sink")?;
    let spec = StackSpec {
        benchmark_mode: true,
        ..StackSpec::new("bench-replica")
    };
    let stack = MailStack::start(spec).context("starting the replica's Postfix + Dovecot")?;
    let standby = (
        lmtp_alone(&s, &stack, false)?,
        lmtp_alone(&s, &stack, true)?,
    );
    eprintln!("lag: {} msg/s for {} s", s.rate, s.seconds);
    let lag = lag(&s, addr, &stack)?;
    eprintln!("throughput: {} rounds of sync and async", s.rounds);
    let runs = throughput(&s, addr, &stack)?;
    eprintln!("catch-up: {} records", s.backlog);
    let catch = CatchUp {
        standby,
        ..catch_up(&s, addr, &stack)?
    };
    let text = report::report(
        &s,
        &lag,
        &runs,
        &catch,
        &fs_of(stack.dir()),
        (load_before, started.elapsed()),
    );
    println!("{text}");
    if let Some(path) = &args.write {
        write_section(path, "replication", Some("smtp"), &text)?;
        eprintln!("wrote the bench-replication section of {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(AS_LEVEE).is_some() {
        return levee_proxy::cli::main();
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-replication: {err:#}");
            ExitCode::FAILURE
        }
    }
}
