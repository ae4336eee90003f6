//! Crash recovery, in the shape of sled's own crash test: this test binary
//! re-executes itself as a child that appends concurrently and prints every
//! acknowledged seq as soon as `append` returns; the parent SIGKILLs it at a
//! random moment, reopens the journal and checks that nothing acknowledged
//! was lost, the chain is intact and gap-free, and appending continues.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use levee_journal::{Journal, JournalOptions};
use rand::Rng;
use sha2::{Digest, Sha256};

const CHILD_DIR_ENV: &str = "LEVEE_JOURNAL_CRASH_CHILD_DIR";
const TEST_NAME: &str = "crash_recovery";
const ROUNDS: usize = 5;
const APPENDERS: usize = 8;

#[test]
fn crash_recovery() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        run_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..ROUNDS {
        let before = acked.len();
        for (seq, hash) in run_and_kill(dir.path()) {
            if let Some(old) = acked.insert(seq, hash.clone()) {
                panic!("seq {seq} acknowledged twice ({old} then {hash})");
            }
        }
        assert!(
            acked.len() > before,
            "round {round}: child acknowledged nothing"
        );

        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let head = j.head();
        for (seq, hash) in &acked {
            assert!(
                *seq <= head,
                "round {round}: acked seq {seq} beyond head {head}"
            );
            let rec = j.get(*seq).unwrap().expect("acknowledged record lost");
            assert_eq!(&hex::encode(rec.body_sha256), hash, "seq {seq}");
            assert_eq!(
                &hex::encode(Sha256::digest(rec.kind.body())),
                hash,
                "seq {seq}"
            );
        }
        let seqs: Vec<u64> = j
            .read_from(1, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "round {round}: gap in seqs"
        );
        let report = j.verify().unwrap();
        assert!(report.is_intact(), "round {round}: {report:?}");
        assert_eq!(report.records_checked, head);

        let rec = common::simple(round as u64);
        let body_hash = hex::encode(Sha256::digest(rec.kind.body()));
        let a = rt.block_on(j.append(rec)).unwrap();
        assert_eq!(
            a.seq,
            head + 1,
            "round {round}: append did not continue at head+1"
        );
        acked.insert(a.seq, body_hash);
        eprintln!(
            "crash round {round}: head {head}, {} acknowledged in total",
            acked.len()
        );
    }
}

/// Starts a child appender, kills it at a random moment after its first
/// acknowledgement, and returns everything it acknowledged.
fn run_and_kill(dir: &Path) -> Vec<(u64, String)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Liveness guard only: a healthy child acknowledges within milliseconds.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child produced no acknowledgement");
        let is_ack = line.starts_with("ACK ");
        lines.push(line);
        if is_ack {
            break;
        }
    }
    let delay = rand::rng().random_range(10..400);
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(|l| {
            let (seq, hash) = l.split_once(' ').expect("malformed ACK line");
            (seq.parse().expect("malformed seq"), hash.to_owned())
        })
        .collect()
}

/// Child mode: append until killed (or a safety deadline passes).
fn run_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let j = Journal::open(dir, JournalOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..APPENDERS {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    n += 1;
                    let body = random_body();
                    let hash = hex::encode(Sha256::digest(&body));
                    let rec = common::message(
                        "crash@example.org",
                        &["rcpt@example.net"],
                        Some(&format!("crash-{n}@example.org")),
                        &body,
                        common::T0 + n,
                    );
                    let a = j.append(rec).await.unwrap();
                    assert_eq!(hex::encode(a.body_sha256), hash);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {hash}", a.seq).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Mostly small messages, some compressible mid-size ones and a few large
/// enough for sled to store them as separate blob files.
fn random_body() -> Vec<u8> {
    let mut rng = rand::rng();
    match rng.random_range(0..10) {
        0 => (0..rng.random_range(150_000..300_000))
            .map(|_| rng.random())
            .collect(),
        1 | 2 => {
            b"Received: by relay.example.org; compressible\r\n".repeat(rng.random_range(100..1000))
        }
        _ => (0..rng.random_range(100..4000))
            .map(|_| rng.random())
            .collect(),
    }
}
