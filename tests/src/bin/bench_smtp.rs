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
//!    which pays its journal (fdatasync before every 250) and nothing else.
//!
//! Runs alternate (direct, levee, direct, levee, ...) and the figures are medians over rounds.
//! levee runs as a child process: this very binary re-executed with `BENCH_SMTP_AS_LEVEE=1`
//! calls `levee_proxy::cli::main()`, the `levee` binary's entry point, so the child is always
//! built from the same sources as the bench. Every levee run gets a fresh journal on disk
//! (under /var/tmp) and must journal exactly the number of messages sent, or the bench fails.

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
const FROM: &str = "bench@example.org";
const TO: &str = "alice@example.test";
const BEGIN: &str = "<!-- bench-smtp:begin";
const END: &str = "<!-- bench-smtp:end -->";

#[derive(Debug)]
struct Args {
    rounds: usize,
    messages: u64,
    sink_messages: u64,
    sessions: u32,
    size: u32,
    write: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rounds: 3,
        messages: 4000,
        sink_messages: 20000,
        sessions: 20,
        size: 4096,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value()?.parse()?,
            "--messages" => args.messages = value()?.parse()?,
            "--sink-messages" => args.sink_messages = value()?.parse()?,
            "--sessions" => args.sessions = value()?.parse()?,
            "--size" => args.size = value()?.parse()?,
            "--write" => args.write = Some(PathBuf::from(value()?)),
            _ => bail!(
                "usage: bench-smtp [--rounds N] [--messages N] [--sink-messages N] \
                 [--sessions N] [--size BYTES] [--write BENCHMARKS.md] (unknown {flag:?})"
            ),
        }
    }
    ensure!(args.rounds > 0 && args.messages > 0 && args.sink_messages > 0);
    Ok(args)
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

fn source_args(args: &Args, n: u64, reuse: bool, addr: SocketAddr) -> Vec<String> {
    let mut v: Vec<String> = vec!["-s".into(), args.sessions.to_string(), "-l".into()];
    v.extend([args.size.to_string(), "-m".into(), n.to_string()]);
    if reuse {
        v.push("-d".into());
    }
    v.extend([
        "-f".into(),
        FROM.into(),
        "-t".into(),
        TO.into(),
        addr.to_string(),
    ]);
    v
}

/// Runs smtp-source to completion; returns its wall time. Any failure is fatal.
fn source(args: &Args, n: u64, reuse: bool, addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("/usr/sbin/smtp-source")
        .args(source_args(args, n, reuse, addr))
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

    /// Sum of every series of `name` in levee's Prometheus exposition.
    fn metric(text: &str, name: &str) -> u64 {
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Reads metrics and peak RSS, stops levee (SIGTERM), reopens the journal and checks that
    /// it holds exactly `sent` messages.
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
        let facts = Facts {
            hwm_kib,
            appends: Self::metric(&text, "levee_journal_appends_total"),
            flushes: Self::metric(&text, "levee_journal_flushes_total"),
            delivered: Self::metric(&text, "levee_messages_delivered_total"),
            head: journal.head(),
        };
        ensure!(
            facts.head == sent && facts.appends == sent && facts.delivered == sent,
            "levee run lost count: sent {sent}, journal head {}, appends {}, delivered upstream {}\n{}",
            facts.head,
            facts.appends,
            facts.delivered,
            self.log_tail()
        );
        Ok(facts)
    }
}

/// Messages in alice's Maildir (new/ and cur/).
fn maildir_count(stack: &MailStack) -> u64 {
    let dir = stack.maildir("alice");
    ["new", "cur"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join(d))
                .map(|r| r.count() as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// Waits until alice's Maildir holds `expected` messages; returns the time since `started`.
fn drain(stack: &MailStack, expected: u64, started: Instant) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count = maildir_count(stack);
        ensure!(
            count <= expected,
            "{count} messages in the Maildir, only {expected} sent"
        );
        if count == expected {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "only {count} of {expected} messages delivered after 300 s\n{}",
                levee_tests::tail(&stack.postfix_log(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn fmt_rate(r: f64) -> String {
    let r = r.round() as u64;
    if r >= 1000 {
        format!("{},{:03}", r / 1000, r % 1000)
    } else {
        r.to_string()
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|&v| fmt_rate(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-round results of one scenario.
#[derive(Debug, Default)]
struct Series {
    direct: Vec<f64>,
    levee: Vec<f64>,
    direct_delivered: Vec<f64>,
    levee_delivered: Vec<f64>,
    facts: Vec<Facts>,
}

fn bench_postfix(args: &Args) -> Result<(Series, String)> {
    let spec = StackSpec {
        benchmark_mode: true,
        ..StackSpec::new("bench")
    };
    let stack = MailStack::start(spec).context("starting Postfix + Dovecot")?;
    let n = args.messages;
    let mut expected = 200;
    source(args, 200, false, stack.smtp_addr())?; // warm-up: Postfix and Dovecot processes
    drain(&stack, expected, Instant::now())?;
    let mut s = Series::default();
    for round in 1..=args.rounds {
        let started = Instant::now();
        let t = source(args, n, false, stack.smtp_addr())?;
        expected += n;
        let until_delivered = drain(&stack, expected, started)?;
        s.direct.push(rate(n, t));
        s.direct_delivered.push(rate(n, until_delivered));

        let levee = start_levee(stack.smtp_addr())?;
        let started = Instant::now();
        let t = source(args, n, false, levee.relay)?;
        expected += n;
        let until_delivered = drain(&stack, expected, started)?;
        s.facts.push(levee.finish(n)?);
        s.levee.push(rate(n, t));
        s.levee_delivered.push(rate(n, until_delivered));
        eprintln!(
            "postfix round {round}: direct {} msg/s, levee {} msg/s",
            fmt_rate(s.direct[round - 1]),
            fmt_rate(s.levee[round - 1])
        );
    }
    Ok((s, fs_of(stack.dir())))
}

fn bench_sink(args: &Args) -> Result<Series> {
    let addr = local(free_port()?);
    let sink = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &addr.to_string(), "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("spawning /usr/sbin/smtp-sink")?;
    let _sink = Guard(sink);
    wait_listening(addr, "smtp-sink")?;
    let n = args.sink_messages;
    source(args, 2000, true, addr)?; // warm-up
    let mut s = Series::default();
    for round in 1..=args.rounds {
        s.direct.push(rate(n, source(args, n, true, addr)?));
        let levee = start_levee(addr)?;
        let t = source(args, n, true, levee.relay)?;
        s.facts.push(levee.finish(n)?);
        s.levee.push(rate(n, t));
        eprintln!(
            "smtp-sink round {round}: direct {} msg/s, levee {} msg/s",
            fmt_rate(s.direct[round - 1]),
            fmt_rate(s.levee[round - 1])
        );
    }
    Ok(s)
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `device fstype mountpoint` of the filesystem holding `dir`.
fn fs_of(dir: &Path) -> String {
    let out = shell(
        "df",
        &["--output=source,fstype,target", &dir.display().to_string()],
    );
    let line = out.lines().nth(1).unwrap_or("?");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn facts_line(facts: &[Facts]) -> String {
    let per: Vec<String> = facts
        .iter()
        .map(|f| {
            let ratio = f.appends as f64 / f.flushes.max(1) as f64;
            format!(
                "{} journaled / {} flushes ({ratio:.1} per fdatasync), peak RSS {} MiB",
                f.head,
                f.flushes,
                f.hwm_kib / 1024
            )
        })
        .collect();
    per.join("; ")
}

fn report(args: &Args, pf: &Series, stack_fs: &str, sink: &Series) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .unwrap_or(": ?");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = shell("uname", &["-r"]);
    let date = shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let cmd: Vec<String> = std::env::args().skip(1).collect();
    let (m, k, sz) = (args.messages, args.sink_messages, args.size);
    let a = |n, reuse, port: &str| {
        format!(
            "smtp-source {}",
            source_args(args, n, reuse, local(0)).join(" ")
        )
        .replace("127.0.0.1:0", port)
    };
    let ratio = |s: &Series| median(&s.levee) / median(&s.direct);
    let ratio_d = |s: &Series| median(&s.levee_delivered) / median(&s.direct_delivered);
    let hwm = |s: &Series| s.facts.iter().map(|f| f.hwm_kib).max().unwrap_or(0) / 1024;
    let mut o = String::new();
    let _ = write!(
        o,
        "{BEGIN} (generated by `bench-smtp --write`; edits inside are overwritten) -->\n\
## SMTP throughput: direct vs through levee\n\n\
- Machine: {nproc} CPUs, {cpu}, Linux {kernel}\n\
- Date: {date}\n\
- Command: `cargo run --release -p levee-tests --bin bench-smtp -- {}`\n\
- levee journal (fresh per levee run, sled + fdatasync group commit): `{JOURNAL_PARENT}` on {}; \
mail stack (Postfix queue, Maildirs): {stack_fs}\n\
- levee: release build, relay listener `tls = \"none\"`, log level info to a file beside the journal, \
metrics on; every 250 from levee means the message was fdatasync'ed first.\n\
- {} rounds, runs alternating direct, levee, direct, levee, ...; figures are medians over rounds.\n\n\
| figure | direct | levee | levee/direct | goal |\n| --- | --- | --- | --- | --- |\n\
| Postfix accept, {m} msgs, new connection per message, {} sessions, {sz} B | {} msg/s | {} msg/s | {:.2}x | >= 0.75x (stretch 0.9x) |\n\
| Postfix, same runs, until all in Dovecot's Maildir | {} msg/s | {} msg/s | {:.2}x | |\n\
| smtp-sink, {k} msgs, connections reused (`-d`), {} sessions, {sz} B | {} msg/s | {} msg/s | {:.2}x | levee >= 3,000 msg/s |\n\
| levee peak RSS (VmHWM), max over runs | | {} MiB (Postfix) / {} MiB (sink) | | |\n\n",
        cmd.join(" "),
        fs_of(Path::new(JOURNAL_PARENT)),
        args.rounds,
        args.sessions,
        fmt_rate(median(&pf.direct)),
        fmt_rate(median(&pf.levee)),
        ratio(pf),
        fmt_rate(median(&pf.direct_delivered)),
        fmt_rate(median(&pf.levee_delivered)),
        ratio_d(pf),
        args.sessions,
        fmt_rate(median(&sink.direct)),
        fmt_rate(median(&sink.levee)),
        ratio(sink),
        hwm(pf),
        hwm(sink),
    );
    let _ = write!(
        o,
        "Per round (msg/s, in order):\n\n\
- Postfix accept: direct {}; levee {}\n\
- Postfix until in Maildir: direct {}; levee {}\n\
- smtp-sink: direct {}; levee {}\n\n\
Journal after each levee run (journal head after reopening; appends and flushes from \
`levee_journal_appends_total` / `levee_journal_flushes_total` read before stopping):\n\n\
- Postfix: {}\n- smtp-sink: {}\n\n\
### How to reproduce each figure\n\n\
The bench does all of this itself; by hand, as root:\n\n\
- Postfix: a `MailStack` with `benchmark_mode = true` (Postfix 25 -> Dovecot LMTP, user alice). \
Direct: `{}`; levee: the same against levee's relay listener, levee's upstream being that \
Postfix. A warm-up of 200 messages goes first. After every run the bench waits until alice's \
Maildir holds every message sent so far, so each run starts with an empty Postfix queue \
(\"until in Maildir\" is sent count / time from the start of smtp-source to the last delivery).\n\
- smtp-sink: `smtp-sink -u nobody 127.0.0.1:PORT 1000` (one sink for all runs, warm-up of \
2,000 messages). Direct: `{}`; levee: the same against levee, upstream = the sink.\n\
- levee: `BENCH_SMTP_AS_LEVEE=1 bench-smtp run --config levee.toml` (that is `levee run`), \
config `[smtp] hostname`, `local_domains = [\"example.test\"]`, `max_connections = 10000`, \
one `[[smtp.listen]] kind = \"relay\" tls = \"none\"`, `[metrics] listen`, data_dir under \
{JOURNAL_PARENT}. Peak RSS is `VmHWM` of `/proc/<levee>/status` just before SIGTERM.\n\
- Sanity checks that fail the bench: smtp-source exit status; every levee run's journal head, \
appends and upstream deliveries equal the messages sent; every message reaches the Maildir.\n\n{END}\n",
        list(&pf.direct),
        list(&pf.levee),
        list(&pf.direct_delivered),
        list(&pf.levee_delivered),
        list(&sink.direct),
        list(&sink.levee),
        facts_line(&pf.facts),
        facts_line(&sink.facts),
        a(m, false, "127.0.0.1:PORT"),
        a(k, true, "127.0.0.1:PORT"),
    );
    o
}

/// Replaces the bench-smtp section of `path` (or appends it), keeping everything else.
fn write_section(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# levee benchmarks\n\n".into());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let rest = old[e + END.len()..].trim_start_matches('\n');
            format!("{}{section}{rest}", &old[..b])
        }
        _ => format!("{}\n\n{section}", old.trim_end_matches('\n')),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn bench() -> Result<()> {
    let args = parse_args()?;
    levee_proxy::mailstack::check_installed()?;
    let (pf, stack_fs) = bench_postfix(&args)?;
    let sink = bench_sink(&args)?;
    let text = report(&args, &pf, &stack_fs, &sink);
    println!("{text}");
    if let Some(path) = &args.write {
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
