//! levee's journal on a small filesystem of its own (a tmpfs mounted for the test; it needs
//! root, as CI has, and fails rather than skips without it), in front of real Postfix and
//! Dovecot. Mail fills it until levee answers 452; levee goes on answering, keeps and
//! delivers everything it acknowledged, and accepts mail again once space returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use levee_journal::{Journal, JournalOptions};
use levee_proxy::mailstack::StackSpec;
use levee_tests::levee::{Levee, LeveeMode};
use levee_tests::load::SmtpSession;
use levee_tests::start_stack_spec;

/// A tmpfs at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], &self.0);
    }
}

fn mount(args: &[&str], dir: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .expect("mount runs");
    assert!(
        out.status.success(),
        "cannot mount a tmpfs under the journal (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const SIZE: usize = 256 * 1024;

/// How many copies of each Message-ID (without brackets) `messages` hold, read from their
/// headers only.
fn message_ids(messages: &[Vec<u8>]) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for message in messages {
        let head = String::from_utf8_lossy(&message[..message.len().min(4096)]);
        let id = head
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .and_then(|rest| rest.strip_suffix('>'));
        if let Some(id) = id {
            *ids.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    ids
}

/// A message of about `SIZE` bytes that does not compress (the journal compresses bodies,
/// and a disk fills with what is stored).
fn message(id: &str) -> Vec<u8> {
    let mut state = id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut m = format!(
        "From: <bob@example.org>\r\nTo: <alice@example.test>\r\nSubject: fill\r\n\
         Message-ID: <{id}>\r\n\r\n"
    )
    .into_bytes();
    while m.len() < SIZE {
        for _ in 0..76 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            m.push(b'a' + (state % 26) as u8);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn send(session: &mut SmtpSession, id: &str) -> Result<String, String> {
    session
        .transfer("bob@example.org", "alice@example.test", &message(id))
        .map(|(reply, _)| reply)
        .map_err(|e| e.to_string())
}

#[test]
fn a_full_journal_disk_gets_452_loses_nothing_and_recovers() {
    let (stack, dir) = start_stack_spec(StackSpec::new("diskfull"));
    let disk = Tmpfs::mount(&dir.path().join("data"), "40m");
    let mut levee = Levee::start(
        LeveeMode::InProcess,
        dir.path(),
        &stack,
        "[journal]\nmin_free_mb = 8\n",
    );
    let mut session = SmtpSession::connect(levee.ports.relay).expect("connect to levee");

    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for n in 0..400 {
        let id = format!("fill{n}@example.org");
        match send(&mut session, &id) {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("40 MiB never filled up");
    assert!(
        refusal.contains("452 4.3.1"),
        "the refusal of a message on a full disk: {refusal}"
    );
    assert!(acknowledged.len() >= 10, "{} accepted", acknowledged.len());
    println!(
        "{} messages of {} KiB accepted before the disk filled; then: {}",
        acknowledged.len(),
        SIZE / 1024,
        refusal.trim()
    );

    // Still refused, on the same session and on a new one; levee answers throughout.
    assert!(
        send(&mut session, "again@example.org")
            .unwrap_err()
            .contains("452")
    );
    let mut fresh = SmtpSession::connect(levee.ports.relay).expect("a new session is greeted");
    assert!(
        send(&mut fresh, "fresh@example.org")
            .unwrap_err()
            .contains("452")
    );
    assert_eq!(levee.metric("levee_journal_low_space"), Some(1.0));

    // Space returns: mail is accepted again, on the session that was refused.
    disk.resize("256m");
    let reply = send(&mut session, "after@example.org").expect("accepted once space returns");
    assert!(reply.starts_with("250"), "{reply}");
    acknowledged.push("after@example.org".into());
    assert_eq!(levee.metric("levee_journal_low_space"), Some(0.0));

    // Everything acknowledged reached the mailbox, once; nothing refused did.
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let ids = message_ids(&stack.inbox_messages("alice").expect("read the maildir"));
        if acknowledged.iter().all(|id| ids.contains_key(id)) || Instant::now() > deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for id in &acknowledged {
        assert_eq!(delivered.get(id), Some(&1), "copies of {id} delivered");
    }
    for refused in ["again@example.org", "fresh@example.org"] {
        assert!(
            !delivered.contains_key(refused),
            "{refused} was refused but delivered"
        );
    }

    // And it is all in the journal, whose chain verifies.
    levee.stop();
    let journal = Journal::open(&dir.path().join("data/journal"), JournalOptions::default())
        .expect("open the journal");
    for id in &acknowledged {
        assert_eq!(
            journal.by_message_id(id).unwrap().len(),
            1,
            "{id} in the journal"
        );
    }
    assert!(journal.verify().unwrap().is_intact());
    drop(journal);
    drop(disk);
}
