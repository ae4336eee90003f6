//! A real full disk under the journal: a small tmpfs mounted for the test (needs root, as
//! the end-to-end tests do; without it the test fails, it does not skip). Appends fill it
//! until the journal answers `Full`; nothing acknowledged is lost. With a free-space
//! reserve (what levee runs with) the journal takes appends again by itself once space is
//! freed; without one, sled meets ENOSPC, latches it, and the journal needs a reopen.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::message;
use levee_journal::{DeliveryState, DeliveryStatus, Journal, JournalError, JournalOptions};

/// A tmpfs mounted at a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        mount(&dir, &format!("size={size}"), false);
        SmallDisk {
            dir,
            _parent: parent,
        }
    }

    fn grow(&self, size: &str) {
        mount(&self.dir, &format!("remount,size={size}"), true);
    }
}

fn mount(dir: &Path, options: &str, remount: bool) {
    let mut cmd = Command::new("mount");
    if !remount {
        cmd.args(["-t", "tmpfs", "tmpfs"]);
    }
    let out = cmd
        .args(["-o", options])
        .arg(dir)
        .output()
        .expect("mount runs");
    assert!(
        out.status.success(),
        "cannot mount a tmpfs for the disk-full test (it needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn body(n: u64) -> Vec<u8> {
    // Incompressible-ish, so that the disk fills at the rate the test expects.
    let mut state = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let noise: String = (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    format!("Message-ID: <fill{n}@example.org>\r\nSubject: fill {n}\r\n\r\n{noise}\r\n")
        .into_bytes()
}

fn record(n: u64) -> levee_journal::NewRecord {
    let id = format!("<fill{n}@example.org>");
    message(
        "sender@example.org",
        &["rcpt@example.net"],
        Some(&id),
        &body(n),
        common::T0 + n,
    )
}

/// Appends until three are refused with `Full`; returns the acknowledged (seq, n).
async fn fill(journal: &Journal) -> Vec<(u64, u64)> {
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 1..=2000u64 {
        match journal.append(record(n)).await {
            Ok(appended) => acknowledged.push((appended.seq, n)),
            Err(JournalError::Full) => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            Err(other) => panic!("append {n}: {other} (expected success or Full)"),
        }
    }
    assert_eq!(refused, 3, "the disk never filled up");
    assert!(
        acknowledged.len() >= 10,
        "only {} appends fit",
        acknowledged.len()
    );
    acknowledged
}

fn check(journal: &Journal, acknowledged: &[(u64, u64)]) {
    for &(seq, n) in acknowledged {
        let stored = journal.get(seq).unwrap().expect("an acknowledged record");
        assert_eq!(stored.kind.body(), body(n).as_slice(), "record {seq}");
    }
    assert!(journal.verify().unwrap().is_intact(), "the chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_appends_are_refused_and_resume_once_space_is_freed() {
    let disk = SmallDisk::mount("16m");
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    let path = disk.dir.join("journal");
    let options = JournalOptions {
        min_free_bytes: 3 << 20,
        ..JournalOptions::default()
    };
    let journal = Journal::open(&path, options.clone()).expect("open on the small disk");

    let mut acknowledged = fill(&journal).await;
    check(&journal, &acknowledged);
    // Refused at the reserve, sled itself never failed: what must still be written while
    // mail is refused (a delivery state) is written.
    let (seq, _) = acknowledged[0];
    let delivered = DeliveryState {
        status: DeliveryStatus::Delivered,
        attempts: 1,
        next_attempt_ms: 0,
        last_reply: Some("250 2.0.0 Ok".into()),
        updated_ms: common::T0,
    };
    journal
        .set_state(seq, &delivered)
        .expect("a state update inside the reserve");
    journal.flush().await.expect("a flush inside the reserve");
    assert!(matches!(
        journal.append(record(4000)).await,
        Err(JournalError::Full)
    ));

    std::fs::remove_file(&filler).unwrap();
    let appended = journal
        .append(record(5000))
        .await
        .expect("appends resume on the same journal once space is freed");
    acknowledged.push((appended.seq, 5000));
    check(&journal, &acknowledged);
    drop(journal);

    let journal = Journal::open(&path, options).expect("reopen");
    check(&journal, &acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_enospc_is_refused_and_a_reopen_recovers() {
    let disk = SmallDisk::mount("6m");
    let path = disk.dir.join("journal");
    let journal = Journal::open(&path, JournalOptions::default()).expect("open on the small disk");
    let mut acknowledged = fill(&journal).await;
    // Once sled has latched ENOSPC (in an append or in its background flush) it refuses
    // reads too; what it must never do is answer with anything but the stored bytes.
    for &(seq, n) in &acknowledged {
        match journal.get(seq) {
            Ok(stored) => {
                let stored = stored.expect("an acknowledged record");
                assert_eq!(stored.kind.body(), body(n).as_slice(), "record {seq}");
            }
            Err(JournalError::Full) => {}
            Err(other) => panic!("read of record {seq} on a full disk: {other}"),
        }
    }

    disk.grow("64m");
    // sled latched its ENOSPC: the same journal keeps refusing...
    assert!(journal.append(record(5000)).await.is_err());
    drop(journal);
    // ...and a reopen finds every acknowledged record and takes appends again.
    let journal = Journal::open(&path, JournalOptions::default()).expect("reopen");
    let appended = journal
        .append(record(5000))
        .await
        .expect("append after reopen");
    acknowledged.push((appended.seq, 5000));
    check(&journal, &acknowledged);
}
