//! `bench-journal`: the compliance commands on a large generated journal.
//!
//! ```text
//! cargo run --release -p levee-tests --bin bench-journal -- [--messages 1000000] [--write BENCHMARKS.md]
//! ```
//!
//! Builds a journal of `--messages` messages (1,000 senders, 10,000 recipients, bodies of
//! about 2 KiB of varied text) with concurrent appends, as `levee run` would journal them,
//! then runs `levee journal` on it as a child process (this binary re-executed with
//! `BENCH_JOURNAL_AS_LEVEE=1`): a search by recipient (its first page, for 20 recipients),
//! an mbox export of every message, and a verify. Figures: the search's time against the
//! 100 ms goal, export and verify throughput in MB/s of message bytes against 100 and
//! 200 MB/s, and the journal's size on disk against the raw message bytes.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use levee_journal::{ClientInfo, Journal, JournalOptions, MessageRecord, NewRecord, RecordKind};
use levee_tests::bench::{load_average, machine, median, source, thousands, write_section};
use serde_json::Value;

const AS_LEVEE: &str = "BENCH_JOURNAL_AS_LEVEE";
const SENDERS: u64 = 1_000;
const RECIPIENTS: u64 = 10_000;
/// Appends in flight at once (the journal's group commit makes one fsync serve them).
const IN_FLIGHT: usize = 512;
const SEARCHES: u64 = 20;

#[derive(Debug, clap::Parser)]
struct Args {
    /// Messages in the generated journal.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Rewrite this file's bench-journal section.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Keep the generated journal in this directory, and reuse it when it is already there
    /// (for profiling one phase again; the append figure is then not measured).
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
}

/// A deterministic stream of pseudo-random numbers (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

const WORDS: &[&str] = &[
    "kidney",
    "offer",
    "donor",
    "recipient",
    "crossmatch",
    "courier",
    "theatre",
    "surgeon",
    "coordinator",
    "hospital",
    "transport",
    "blood",
    "type",
    "tissue",
    "results",
    "pending",
    "confirmed",
    "flight",
    "ambulance",
    "hours",
    "minutes",
    "consent",
    "family",
    "team",
];

fn message(i: u64) -> MessageRecord {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let from = format!("sender{}@hospital{}.example", i % SENDERS, i % 37);
    let to = format!("rcpt{}@opo.example", next(&mut state) % RECIPIENTS);
    let id = format!("m{i}@bench.example");
    let mut body = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {} {} {i}\r\nMessage-ID: <{id}>\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\n\r\n",
        WORDS[(next(&mut state) % WORDS.len() as u64) as usize],
        WORDS[(next(&mut state) % WORDS.len() as u64) as usize],
    );
    while body.len() < 2_048 {
        body.push_str(WORDS[(next(&mut state) % WORDS.len() as u64) as usize]);
        body.push(if next(&mut state).is_multiple_of(12) {
            '\n'
        } else {
            ' '
        });
        if next(&mut state).is_multiple_of(40) {
            body.push_str(&format!("ref {:x} ", next(&mut state)));
        }
    }
    body.push_str("\r\n");
    MessageRecord {
        mail_from: from,
        rcpt_to: vec![to],
        client: ClientInfo {
            listener: "relay".into(),
            ..ClientInfo::default()
        },
        message_id: Some(id),
        body: body.into_bytes(),
    }
}

/// Appends `n` messages; (seconds, raw message bytes).
fn generate(dir: &Path, n: u64) -> Result<(f64, u64)> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let journal = Arc::new(Journal::open(dir, JournalOptions::default())?);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut bytes = 0;
        for i in 0..n {
            if tasks.len() >= IN_FLIGHT {
                tasks.join_next().await.context("append task")???;
            }
            let record = message(i);
            bytes += record.body.len() as u64;
            let journal = journal.clone();
            tasks.spawn(async move {
                journal
                    .append(NewRecord {
                        time_ms: 1_795_305_600_000 + i,
                        kind: RecordKind::Message(record),
                    })
                    .await
                    .map(drop)
            });
            if i > 0 && i.is_multiple_of(100_000) {
                eprintln!("bench-journal: {i} messages journaled");
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        journal.flush().await?;
        Ok((started.elapsed().as_secs_f64(), bytes))
    })
}

/// `levee journal <args> --journal DIR --json`, timed; its JSON answer and seconds.
fn levee(dir: &Path, args: &[&str]) -> Result<(Value, f64)> {
    let started = Instant::now();
    let output = Command::new(std::env::current_exe()?)
        .env(AS_LEVEE, "1")
        .arg("journal")
        .args(args)
        .arg("--journal")
        .arg(dir)
        .arg("--json")
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let answer: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("levee journal {args:?}: {output:?}"))?;
    Ok((answer, seconds))
}

/// What the disk takes: MB/s of a 1 GiB `dd` with fdatasync.
fn disk_write(dir: &Path) -> Result<f64> {
    let file = dir.join("dd.bin");
    let started = Instant::now();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1M",
            "count=1024",
            "conv=fdatasync",
            "status=none",
        ])
        .arg(format!("of={}", file.display()))
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&file).ok();
    ensure!(status.success(), "dd failed");
    Ok(1024.0 * 1.048_576 / seconds)
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() {
                du(&entry.path())
            } else {
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512
            };
        }
    }
    total
}

fn bench(args: &Args) -> Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("bench-journal-")
        .tempdir_in("/var/tmp")?;
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| scratch.path().join("journal"));
    let load_before = load_average();
    let started = Instant::now();
    let (append_s, raw) = if dir.join("db").exists() {
        let raw = (0..args.messages)
            .map(|i| message(i).body.len() as u64)
            .sum();
        (f64::NAN, raw)
    } else {
        generate(&dir, args.messages)?
    };
    eprintln!(
        "bench-journal: {} messages in {append_s:.1} s",
        args.messages
    );
    let on_disk = du(&dir);

    let mut search_ms = Vec::new();
    let mut query_ms = Vec::new();
    for k in 0..SEARCHES {
        // Recipients of messages spread over the journal.
        let rcpt = message(k * args.messages / SEARCHES).rcpt_to[0].clone();
        let (answer, seconds) = levee(&dir, &["search", "--rcpt", &rcpt])?;
        ensure!(answer["ok"] == true, "search: {answer}");
        ensure!(
            !answer["results"]
                .as_array()
                .unwrap_or(&Vec::new())
                .is_empty(),
            "{rcpt}: none"
        );
        search_ms.push(seconds * 1000.0);
        query_ms.push(answer["query_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let mbox = scratch.path().join("all.mbox");
    let (exported, export_s) = levee(
        &dir,
        &[
            "export",
            "--format",
            "mbox",
            "--out",
            mbox.to_str().unwrap_or(""),
        ],
    )?;
    ensure!(
        exported["exported"].as_u64() == Some(args.messages),
        "export: {exported}"
    );
    std::fs::remove_file(&mbox).ok();
    let (verified, verify_s) = levee(&dir, &["verify"])?;
    ensure!(verified["ok"] == true, "verify: {verified}");
    let disk_mb_s = disk_write(scratch.path())?;
    let mb = raw as f64 / 1e6;
    let search = median(&search_ms);
    let search_max = search_ms.iter().copied().fold(0.0, f64::max);
    let query = median(&query_ms);
    let query_max = query_ms.iter().copied().fold(0.0, f64::max);
    let goal = |met: bool| if met { "met" } else { "**not met**" };
    let section = format!(
        "<!-- bench-journal:begin (generated by `bench-journal --write`; edits inside are overwritten) -->
## Journal: search, export and verify on {n} messages

- Machine: {machine}; load average {load_before} before, {load_after} after
- Command: `cargo run --release -p levee-tests --bin bench-journal -- --messages {messages} --write BENCHMARKS.md` (took {took:.1} min); source: {source}
- Journal: {n} messages of {avg} bytes on average ({raw_mb:.0} MB of messages; {senders} senders, {rcpts} recipients), journaled by {in_flight} concurrent appends in {append_s:.0} s ({rate} msg/s). Each figure is `levee journal ...` run as a process on it (its start included): search by recipient, first page of 50, for {searches} recipients; an mbox export of every message; a verify of every record.

| figure | value | goal |
| --- | --- | --- |
| search by recipient, median of {searches}: the lookup, journal open | {query:.1} ms (max {query_max:.1} ms) | < 100 ms: {search_goal} |
| the same, the whole `levee journal search` process (open of the journal included) | {search:.0} ms (max {search_max:.0} ms) | |
| export of every message to mbox | {export_mb_s:.0} MB/s of messages ({export_s:.1} s) | >= 100 MB/s: {export_goal} |
| verify of every record | {verify_mb_s:.0} MB/s of messages ({verify_s:.1} s) | >= 200 MB/s: {verify_goal} |
| journal on disk / message bytes | {ratio:.2} ({disk_mb:.0} MB) | |
| yardstick: `dd` of 1 GiB to the same disk, with fdatasync | {disk_mb_s:.0} MB/s | |

<!-- bench-journal:end -->",
        n = thousands(args.messages as f64),
        machine = machine(),
        load_after = load_average(),
        messages = args.messages,
        took = started.elapsed().as_secs_f64() / 60.0,
        source = source(),
        avg = raw / args.messages.max(1),
        raw_mb = mb,
        senders = SENDERS,
        rcpts = thousands(RECIPIENTS as f64),
        in_flight = IN_FLIGHT,
        rate = thousands(args.messages as f64 / append_s),
        searches = SEARCHES,
        search_goal = goal(query < 100.0),
        export_mb_s = mb / export_s,
        export_goal = goal(mb / export_s >= 100.0),
        verify_mb_s = mb / verify_s,
        verify_goal = goal(mb / verify_s >= 200.0),
        ratio = on_disk as f64 / raw as f64,
        disk_mb = on_disk as f64 / 1e6,
    );
    println!("{section}");
    if let Some(path) = &args.write {
        write_section(path, "journal", Some("imap"), &section)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(AS_LEVEE).is_some() {
        return levee_proxy::cli::main();
    }
    let args = <Args as clap::Parser>::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-journal: {err:#}");
            ExitCode::FAILURE
        }
    }
}
