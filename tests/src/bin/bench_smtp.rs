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

const AS_LEVEE: &str = "BENCH_SMTP_AS_LEVEE";
const JOURNAL_PARENT: &str = "/var/tmp";
const BEGIN: &str = "<!-- bench-smtp:begin";
const END: &str = "<!-- bench-smtp:end -->";
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

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        ensure!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
         [smtp]\nhostname = \"levee.bench\"\nlocal_domains = [\"example.test\"]\nmax_connections = 10000\n\n\
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

/// Removes alice's Maildir (Dovecot recreates it, indexes included, on the next delivery).
fn empty_maildir(stack: &MailStack) -> Result<()> {
    match std::fs::remove_dir_all(stack.maildir("alice")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context("emptying the Maildir")
        }
        _ => Ok(()),
    }
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
            fmt(d),
            fmt(l)
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

fn shell(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `device fstype mountpoint` of the filesystem holding `dir`.
fn fs_of(dir: &Path) -> String {
    let out = shell(
        "df",
        &["--output=source,fstype,target", &dir.display().to_string()],
    );
    out.lines()
        .nth(1)
        .unwrap_or("?")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn fmt(r: f64) -> String {
    let r = r.round() as u64;
    if r >= 1000 {
        format!("{},{:03}", r / 1000, r % 1000)
    } else {
        r.to_string()
    }
}

/// `| what | direct | levee | ratio | goal |` from the medians of `pick`.
fn row(o: &mut String, what: &str, s: &Series, pick: fn(&Run) -> f64, unit: &str, goal: &str) {
    let d = median(s.direct.iter().map(pick));
    let l = median(s.levee.iter().map(pick));
    let each = |runs: &[Run]| {
        runs.iter()
            .map(|r| fmt(pick(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        o,
        "| {what} | {} {unit} | {} {unit} | {:.2}x | {goal} | {} / {} |",
        fmt(d),
        fmt(l),
        l / d,
        each(&s.direct),
        each(&s.levee)
    );
}

fn journal_facts(o: &mut String, what: &str, s: &Series, sent: u64, tck: f64) {
    let each: Vec<String> = s.facts.iter().map(|f| {
        let per = f.appends as f64 / f.flushes.max(1) as f64;
        let cpu = f.cpu_ticks as f64 * 1e6 / tck / sent as f64;
        format!("{} journaled, {} fdatasyncs ({per:.1} msgs each), levee CPU {cpu:.0} us/msg, peak RSS {:.1} MiB", f.head, f.flushes, f.hwm_kib as f64 / 1024.0)
    }).collect();
    let _ = writeln!(o, "- {what}: {}", each.join("; "));
}

fn report(a: &Args, pf: &Series, stack_fs: &str, sink: &Series) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| {
        Some(
            l.strip_prefix("model name")?
                .trim_start_matches([' ', '\t', ':']),
        )
    });
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (kernel, date) = (
        shell("uname", &["-r"]),
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let (m, k, sz, ss) = (a.messages, a.sink_messages, a.size, a.sessions);
    let mut o = String::new();
    let _ = write!(
        o,
        "{BEGIN} (generated by `bench-smtp --write`; edits inside are overwritten) -->\n\
         ## SMTP: direct vs through levee\n\n\
         - Machine: {nproc} CPUs ({}), Linux {kernel}; date {date}\n\
         - Command: `cargo run --release -p levee-tests --bin bench-smtp -- {cmd}`\n\
         - levee journal: fresh per levee run under `{JOURNAL_PARENT}`, on {}; mail stack \
         (Postfix queue, Maildirs) on {stack_fs}\n\
         - {} rounds alternating direct, levee, direct, levee, ...; medians, then every round \
         (direct / levee) in the last column\n\n\
         | figure | direct | levee | levee/direct | goal | rounds |\n| --- | --- | --- | --- | --- | --- |\n",
        model.unwrap_or("?"),
        fs_of(Path::new(JOURNAL_PARENT)),
        a.rounds,
    );
    let postfix = format!("Postfix, {ss} sessions, new connection per message, {m} x {sz} B");
    let sink_many = format!("smtp-sink, {ss} sessions, connections reused (-d), {k} x {sz} B");
    type Pick = fn(&Run) -> f64;
    #[rustfmt::skip]
    let rows: [(String, &Series, Pick, &str, &str); 7] = [
        (format!("{postfix}: accepted"), pf, |r| r.rate, "msg/s", ">= 0.75x (stretch 0.9x)"),
        (format!("{postfix}: until all in the Maildir"), pf, |r| r.until_maildir, "msg/s", ""),
        (format!("Postfix, 1 session, {} msgs, until in the Maildir", ONE.0), pf, |r| r.one_session, "msg/s", ""),
        ("Postfix: machine CPU (all cores) per message, accepted and delivered".into(), pf, |r| r.cpu_us, "us", ""),
        (sink_many, sink, |r| r.rate, "msg/s", "levee >= 3,000 msg/s"),
        (format!("smtp-sink, 1 session (-d), {} msgs", ONE.1), sink, |r| r.one_session, "msg/s", ""),
        ("smtp-sink: machine CPU (all cores) per message".into(), sink, |r| r.cpu_us, "us", ""),
    ];
    for (what, series, pick, unit, goal) in rows {
        row(&mut o, &what, series, pick, unit, goal);
    }
    let _ = writeln!(
        o,
        "\nAfter each levee run (journal head after reopening; fdatasyncs = `levee_journal_flushes_total`, read before stopping; CPU = utime + stime; peak RSS = VmHWM):\n"
    );
    let tck = clk_tck();
    journal_facts(&mut o, "Postfix", pf, m + ONE.0, tck);
    journal_facts(&mut o, "smtp-sink", sink, k + ONE.1, tck);
    let _ = write!(
        o,
        "\nLoad commands (PORT = Postfix's smtpd or smtp-sink, or levee's relay listener in front of it):\n\n\
         - Postfix: `smtp-source {}`, then `smtp-source {}`\n\
         - smtp-sink (`smtp-sink -u nobody 127.0.0.1:PORT 1000`): `smtp-source {}`, then `smtp-source {}`\n\n{END}\n",
        source_cmd(a, ss, m, false, "127.0.0.1:PORT").join(" "),
        source_cmd(a, 1, ONE.0, false, "127.0.0.1:PORT").join(" "),
        source_cmd(a, ss, k, true, "127.0.0.1:PORT").join(" "),
        source_cmd(a, 1, ONE.1, true, "127.0.0.1:PORT").join(" "),
    );
    o
}

/// Replaces the bench-smtp section of `path` (or appends it), keeping everything else.
fn write_section(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# levee benchmarks\n".into());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let rest = old[e + END.len()..].trim_start_matches('\n');
            format!(
                "{}{section}{}{rest}",
                &old[..b],
                if rest.is_empty() { "" } else { "\n" }
            )
        }
        _ => format!("{}\n\n{section}", old.trim_end_matches('\n')),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn bench() -> Result<()> {
    let a = <Args as clap::Parser>::parse();
    levee_proxy::mailstack::check_installed()?;
    let (pf, stack_fs) = bench_postfix(&a)?;
    let sink = bench_sink(&a)?;
    let text = report(&a, &pf, &stack_fs, &sink);
    println!("{text}");
    if let Some(path) = &a.write {
        write_section(path, &text)?;
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
