//! `bench-smtp`: SMTP throughput with and without levee in front, in one invocation.
//!
//! ```text
//! cargo run --release -p levee-tests --bin bench-smtp -- [--rounds 3] [--messages 4000]
//!     [--sink-messages 20000] [--write BENCHMARKS.md]
//! ```
//!
//! 1. Postfix (a [`MailStack`] in benchmark mode): `smtp-source` (new connection per message)
//!    straight to Postfix's smtpd vs through levee's relay listener in front of it.
//! 2. `smtp-sink`: `smtp-source -d` (connections reused) straight to the sink vs through levee,
//!    which then pays its journal (fdatasync before every 250) and little else.
//!
//! Runs alternate (direct, levee, direct, levee, ...); figures are medians over rounds. levee
//! runs as a child: this binary re-executed with `BENCH_SMTP_AS_LEVEE=1` calls
//! `levee_proxy::cli::main()` (the `levee` binary's entry point), so the child is always built
//! from the same sources. Every levee run gets a fresh journal under /var/tmp and must journal
//! exactly the messages sent, or the bench fails.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use levee_journal::{Journal, JournalOptions};
use levee_proxy::mailstack::{MailStack, StackSpec, free_port};

mod report;
use levee_tests::bench::{
    empty_maildir, fs_of, local, median, shell, thousands, wait_listening, write_section,
};
use report::report;

const AS_LEVEE: &str = "BENCH_SMTP_AS_LEVEE";
const JOURNAL_PARENT: &str = "/var/tmp";
const BEGIN: &str = "<!-- bench-smtp:begin";
const END: &str = "<!-- bench-smtp:end -->";
const SECTION: &str = "smtp";
/// Messages of the single-session (latency-bound) runs: Postfix, smtp-sink.
const ONE: (u64, u64) = (200, 1000);

/// SMTP throughput straight to Postfix / smtp-sink vs through levee (run as root).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Rounds of alternating direct / levee runs (figures are medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages per Postfix run (new connection per message).
    #[arg(long, default_value_t = 4000)]
    messages: u64,
    /// Messages per smtp-sink run (connections reused).
    #[arg(long, default_value_t = 20000)]
    sink_messages: u64,
    /// smtp-source sessions.
    #[arg(long, default_value_t = 20)]
    sessions: u32,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: u32,
    /// Rewrite the SMTP section of this markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// A child process killed (and reaped) on drop, also when the bench fails half-way.
#[derive(Debug)]
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn source_cmd(a: &Args, sessions: u32, n: u64, reuse: bool, to: &str) -> Vec<String> {
    let reuse = if reuse { "-d " } else { "" };
    let s = format!(
        "-s {sessions} -l {} -m {n} {reuse}-f bench@example.org -t alice@example.test {to}",
        a.size
    );
    s.split(' ').map(String::from).collect()
}

/// Runs smtp-source to completion; returns its wall time. Any failure is fatal.
fn source(a: &Args, sessions: u32, n: u64, reuse: bool, addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("/usr/sbin/smtp-source")
        .args(source_cmd(a, sessions, n, reuse, &addr.to_string()))
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
    if !stderr.trim().is_empty() {
        eprintln!("smtp-source warned: {}", stderr.trim());
    }
    Ok(elapsed)
}

fn clk_tck() -> f64 {
    shell("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0)
}

/// Busy CPU time of the whole machine (all CPUs), in clock ticks.
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
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

/// A levee child with a fresh data dir, relaying to `upstream`.
#[derive(Debug)]
struct LeveeRun {
    dir: tempfile::TempDir,
    child: Guard,
    relay: SocketAddr,
    metrics: SocketAddr,
}

/// What one levee run left behind.
#[derive(Debug, Clone, Default)]
struct Facts {
    hwm_kib: u64,
    cpu_ticks: u64,
    appends: u64,
    flushes: u64,
    delivered: u64,
    head: u64,
}

fn start_levee(upstream: SocketAddr) -> Result<LeveeRun> {
    let dir = tempfile::Builder::new()
        .prefix("levee-bench-")
        .tempdir_in(JOURNAL_PARENT)?;
    let (relay, metrics) = (local(free_port()?), local(free_port()?));
    let config = format!(
        "[node]\nid = \"bench\"\ndata_dir = \"{data}\"\n\n[upstream.primary]\nsmtp = \"{upstream}\"\n\n\
         [smtp]\nhostname = \"levee.bench\"\nlocal_domains = [\"example.test\"]\nmax_connections = 10000\nmax_connections_per_ip = 0\n\n\
         [[smtp.listen]]\naddr = \"{relay}\"\nkind = \"relay\"\ntls = \"none\"\n\n[metrics]\nlisten = \"{metrics}\"\n",
        data = dir.path().join("data").display(),
    );
    let config_path = dir.path().join("levee.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("levee.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .env(AS_LEVEE, "1")
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning levee")?;
    let run = LeveeRun {
        dir,
        child: Guard(child),
        relay,
        metrics,
    };
    wait_listening(relay, "levee").map_err(|e| e.context(run.log_tail()))?;
    wait_listening(metrics, "levee metrics")?;
    Ok(run)
}

impl LeveeRun {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("levee.log")).unwrap_or_default();
        levee_tests::tail(&log, 20)
    }

    /// Sum of every series of `name` in a Prometheus exposition.
    fn metric(text: &str, name: &str) -> u64 {
        let lines = text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name));
        lines
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Reads metrics, peak RSS and CPU time, stops levee (SIGTERM), reopens the journal and
    /// checks that it holds exactly `sent` messages, all delivered upstream.
    fn finish(mut self, sent: u64) -> Result<Facts> {
        let mut text = String::new();
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: levee\r\n\r\n")?;
        stream.read_to_string(&mut text)?;
        let pid = self.child.0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<levee>/status")?;
        let cpu_ticks = process_ticks(pid);
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.0.try_wait()? {
                break exit;
            }
            ensure!(Instant::now() < deadline, "levee ignored SIGTERM for 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            exit.success(),
            "levee exited with {exit}:\n{}",
            self.log_tail()
        );
        let journal = Journal::open(
            &self.dir.path().join("data/journal"),
            JournalOptions::default(),
        )?;
        let f = Facts {
            hwm_kib,
            cpu_ticks,
            appends: Self::metric(&text, "levee_journal_appends_total"),
            flushes: Self::metric(&text, "levee_journal_flushes_total"),
            delivered: Self::metric(&text, "levee_messages_delivered_total"),
            head: journal.head(),
        };
        ensure!(
            f.head == sent && f.appends == sent && f.delivered == sent,
            "levee lost count: sent {sent}, journal head {}, appends {}, delivered {}\n{}",
            f.head,
            f.appends,
            f.delivered,
            self.log_tail()
        );
        Ok(f)
    }
}

/// Waits until alice's Maildir (new/ + cur/) holds `expected` messages; returns the time
/// since `started`.
fn drain(stack: &MailStack, expected: u64, started: Instant) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let dir = stack.maildir("alice");
        let count: u64 = ["new", "cur"]
            .iter()
            .map(|d| std::fs::read_dir(dir.join(d)).map_or(0, |r| r.count() as u64))
            .sum();
        ensure!(
            count <= expected,
            "{count} messages in the Maildir, only {expected} sent"
        );
        if count == expected {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            let log = levee_tests::tail(&stack.postfix_log(), 20);
            bail!("only {count} of {expected} messages delivered after 300 s\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run (direct or through levee) of one scenario, in msg/s (`cpu_us`: machine CPU per
/// message of the many-session run).
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rate: f64,
    until_maildir: f64,
    one_session: f64,
    cpu_us: f64,
}

/// Many sessions (timed; machine CPU until the last delivery), then one session. Postfix
/// runs wait until the Maildir holds every message, then empty it: Dovecot's LMTP delivery
/// costs grow with the Maildir (it rescans `new/`), which would penalise later runs.
fn measure(
    a: &Args,
    n: u64,
    one: u64,
    reuse: bool,
    addr: SocketAddr,
    stack: Option<&MailStack>,
) -> Result<Run> {
    let (busy, started) = (machine_busy(), Instant::now());
    let t = source(a, a.sessions, n, reuse, addr)?;
    let mut run = Run {
        rate: n as f64 / t.as_secs_f64(),
        ..Run::default()
    };
    if let Some(stack) = stack {
        run.until_maildir = n as f64 / drain(stack, n, started)?.as_secs_f64();
    }
    run.cpu_us = (machine_busy() - busy) as f64 * 1e6 / clk_tck() / n as f64;
    let t1 = Instant::now();
    source(a, 1, one, reuse, addr)?;
    if let Some(stack) = stack {
        drain(stack, n + one, t1)?;
        empty_maildir(stack)?;
    }
    run.one_session = one as f64 / t1.elapsed().as_secs_f64();
    Ok(run)
}

/// Per-round results of one scenario.
#[derive(Debug, Default)]
struct Series {
    direct: Vec<Run>,
    levee: Vec<Run>,
    facts: Vec<Facts>,
}

/// Alternating rounds against `upstream` (Postfix when `stack` is given, else smtp-sink).
fn rounds(a: &Args, name: &str, upstream: SocketAddr, stack: Option<&MailStack>) -> Result<Series> {
    let (n, one, reuse) = if stack.is_some() {
        (a.messages, ONE.0, false)
    } else {
        (a.sink_messages, ONE.1, true)
    };
    let mut s = Series::default();
    for round in 1..=a.rounds {
        s.direct.push(measure(a, n, one, reuse, upstream, stack)?);
        let levee = start_levee(upstream)?;
        s.levee.push(measure(a, n, one, reuse, levee.relay, stack)?);
        s.facts.push(levee.finish(n + one)?);
        let (d, l) = (s.direct[round - 1].rate, s.levee[round - 1].rate);
        eprintln!(
            "{name} round {round}: direct {} msg/s, levee {} msg/s",
            thousands(d),
            thousands(l)
        );
    }
    Ok(s)
}

fn bench_postfix(a: &Args) -> Result<(Series, String)> {
    let spec = StackSpec {
        benchmark_mode: true,
        ..StackSpec::new("bench")
    };
    let stack = MailStack::start(spec).context("starting Postfix + Dovecot")?;
    source(a, a.sessions, 200, false, stack.smtp_addr())?; // warm-up
    drain(&stack, 200, Instant::now())?;
    empty_maildir(&stack)?;
    let s = rounds(a, "postfix", stack.smtp_addr(), Some(&stack))?;
    Ok((s, fs_of(stack.dir())))
}

fn bench_sink(a: &Args) -> Result<Series> {
    let addr = local(free_port()?);
    let sink = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &addr.to_string(), "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("spawning /usr/sbin/smtp-sink")?;
    let _sink = Guard(sink);
    wait_listening(addr, "smtp-sink")?;
    source(a, a.sessions, 2000, true, addr)?; // warm-up
    rounds(a, "smtp-sink", addr, None)
}

fn bench() -> Result<()> {
    let a = <Args as clap::Parser>::parse();
    levee_proxy::mailstack::check_installed()?;
    let (pf, stack_fs) = bench_postfix(&a)?;
    let sink = bench_sink(&a)?;
    let text = report(&a, &pf, &stack_fs, &sink);
    println!("{text}");
    if let Some(path) = &a.write {
        write_section(path, SECTION, None, &text)?;
        eprintln!("wrote the SMTP section of {}", path.display());
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
            eprintln!("bench-smtp: {err:#}");
            ExitCode::FAILURE
        }
    }
}
