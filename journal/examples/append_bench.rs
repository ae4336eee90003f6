//! Append micro-benchmark: N concurrent tokio tasks append 4 KiB message
//! records, each awaiting durability as levee does before its 250.
//!
//! ```text
//! cargo run --release -p levee-journal --example append_bench -- \
//!     [--dir /var/tmp/levee-bench] [--tasks 20] [--appends 20000] [--body 4096]
//! ```
//!
//! Prints appends/s, appends per flush (group-commit batch size) and process
//! CPU time (utime + stime from `/proc/self/stat`) per append. Run it on a
//! real disk (the default directory is under `/var/tmp`), not tmpfs: the
//! numbers are about fdatasync batching.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use levee_journal::{ClientInfo, Journal, JournalOptions, MessageRecord, NewRecord, RecordKind};

struct Args {
    dir: PathBuf,
    tasks: usize,
    appends: u64,
    body: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/var/tmp/levee-journal-bench"),
        tasks: 20,
        appends: 20_000,
        body: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = value.into(),
            "--tasks" => a.tasks = value.parse().expect("--tasks"),
            "--appends" => a.appends = value.parse().expect("--appends"),
            "--body" => a.body = value.parse().expect("--body"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A mail-like, moderately compressible body of `len` bytes, unique per `n`.
fn body(n: u64, len: usize) -> Vec<u8> {
    let mut b = format!(
        "Received: from client{n}.example.net (client{n}.example.net [192.0.2.{}])\r\n\
         Message-ID: <bench-{n}@example.org>\r\nSubject: benchmark message {n}\r\n\r\n",
        n % 250
    )
    .into_bytes();
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while b.len() < len {
        // xorshift words from a small vocabulary: text-like entropy.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const WORDS: [&str; 8] = [
            "the ", "mail ", "levee ", "queue ", "of ", "and ", "journal ", "\r\n",
        ];
        b.extend_from_slice(WORDS[(x % 8) as usize].as_bytes());
        b.extend_from_slice(format!("{} ", x % 1000).as_bytes());
    }
    b.truncate(len);
    b
}

fn record(n: u64, len: usize) -> NewRecord {
    NewRecord {
        time_ms: 1_709_294_400_000 + n,
        kind: RecordKind::Message(MessageRecord {
            mail_from: format!("sender{}@example.org", n % 97),
            rcpt_to: vec![format!("rcpt{}@example.net", n % 13)],
            client: ClientInfo {
                addr: Some("192.0.2.7:40000".into()),
                helo: Some("mx.example.net".into()),
                authenticated_user: None,
                listener: "inbound".into(),
                tls: true,
            },
            message_id: Some(format!("<bench-{n}@example.org>")),
            body: body(n, len),
        }),
    }
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after ")".
    let rest = &stat[stat.rfind(')').expect("malformed stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // Linux reports these in USER_HZ, which is 100 on every architecture.
    ticks as f64 / 100.0
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let a = args();
    let _ = std::fs::remove_dir_all(&a.dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let j = Journal::open(&a.dir, JournalOptions::default()).expect("open journal");
    let bodies: Arc<Vec<NewRecord>> =
        Arc::new((0..a.appends.min(256)).map(|n| record(n, a.body)).collect());

    // Warm-up: a few hundred appends so sled's segments and caches exist.
    rt.block_on(async {
        for n in 0..200 {
            j.append(bodies[n % bodies.len()].clone()).await.unwrap();
        }
    });

    let next = Arc::new(AtomicU64::new(0));
    let flushes0 = j.flush_count();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..a.tasks {
            let (j, next, bodies) = (j.clone(), next.clone(), bodies.clone());
            let total = a.appends;
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let rec = bodies[(n % bodies.len() as u64) as usize].clone();
                    j.append(rec).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let flushes = j.flush_count() - flushes0;
    let n = a.appends as f64;
    println!(
        "{} appends of {} B by {} tasks in {wall:.2} s ({})",
        a.appends,
        a.body,
        a.tasks,
        a.dir.display()
    );
    println!("appends/s          {:.0}", n / wall);
    println!(
        "appends per flush  {:.2} ({flushes} flushes)",
        n / flushes.max(1) as f64
    );
    println!("CPU per append     {:.1} us (utime+stime)", cpu * 1e6 / n);
    println!("peak RSS           {} MiB", peak_rss_kib() / 1024);
    drop(j);
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&a.dir);
}
