//! Writes the binary seeds of the fuzz corpus: replication frames as levee encodes them
//! and journal record values as levee stores them (plain, compressed, sealed with the key
//! the journal-record target uses, and every record kind). The text seeds (SMTP and IMAP
//! sessions, server responses, configurations) are written by hand.
//!
//! `cargo run -p levee-tests --bin fuzz-seeds -- fuzz/corpus`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use levee_journal::{
    AuditRecord, BodyKey, ClientInfo, Journal, JournalOptions, MailboxChange, MailboxRecord,
    MessageRecord, MessageRef, NewRecord, RecordKind,
};
use levee_replica::frame::{self, Frame};

#[derive(Parser)]
struct Args {
    /// The corpus directory (one subdirectory per fuzz target).
    corpus: PathBuf,
}

const T0: u64 = 1_709_294_400_000;

fn message(n: u64, body: Vec<u8>) -> NewRecord {
    NewRecord {
        time_ms: T0 + n,
        kind: RecordKind::Message(MessageRecord {
            mail_from: "sender@example.org".into(),
            rcpt_to: vec!["alice@example.test".into(), "bob@example.test".into()],
            client: ClientInfo {
                addr: Some("192.0.2.7:40000".into()),
                helo: Some("mx.example.net".into()),
                authenticated_user: n.is_multiple_of(2).then(|| "alice".into()),
                listener: "inbound".into(),
                tls: n % 2 == 1,
            },
            message_id: Some(format!("<m{n}@example.org>")),
            body,
        }),
    }
}

fn mailbox(n: u64, change: MailboxChange) -> NewRecord {
    let record = MailboxRecord {
        user: "alice".into(),
        change,
    };
    NewRecord {
        time_ms: T0 + n,
        kind: if n.is_multiple_of(2) {
            RecordKind::Mailbox(record)
        } else {
            RecordKind::MailboxAtReplica(record)
        },
    }
}

fn records() -> Vec<NewRecord> {
    let short = b"Subject: hello\r\n\r\nshort body\r\n".to_vec();
    let long = format!(
        "Subject: long\r\nMessage-ID: <m2@example.org>\r\n\r\n{}",
        "compressible line of text\r\n".repeat(200)
    );
    let reference = MessageRef {
        uid: 7,
        trace: Some("L2.0011223344556677".into()),
        message_id: Some("<m2@example.org>".into()),
        size: 42,
    };
    vec![
        message(1, short.clone()),
        message(2, long.into_bytes()),
        NewRecord {
            time_ms: T0 + 3,
            kind: RecordKind::Audit(AuditRecord {
                actor: "officer@example.org".into(),
                action: "journal-hold".into(),
                detail: r#"{"reason":"case 1","ranges":[[1,2]]}"#.into(),
            }),
        },
        mailbox(
            4,
            MailboxChange::Append {
                mailbox: "Sent".into(),
                flags: vec!["\\Seen".into()],
                internal_date: Some("05-Dec-2026 10:00:00 +0000".into()),
                body: short,
            },
        ),
        mailbox(
            5,
            MailboxChange::Flags {
                mailbox: "INBOX".into(),
                messages: vec![(reference.clone(), vec!["\\Flagged".into()])],
            },
        ),
        mailbox(
            6,
            MailboxChange::Copy {
                from: "INBOX".into(),
                to: "Archive".into(),
                messages: vec![reference.clone()],
            },
        ),
        mailbox(
            8,
            MailboxChange::Expunge {
                mailbox: "INBOX".into(),
                messages: vec![reference],
            },
        ),
        mailbox(
            10,
            MailboxChange::Rename {
                from: "Archive".into(),
                to: "Archive/2026".into(),
            },
        ),
    ]
}

/// Appends every record to a journal in `dir` and returns the journal.
async fn journal(dir: &Path, key: Option<BodyKey>) -> Result<Journal> {
    let options = JournalOptions {
        body_key: key.map(Arc::new),
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir, options)?;
    for record in records() {
        journal.append(record).await?;
    }
    Ok(journal)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;

    let stored = args.corpus.join("journal_record");
    for (label, key) in [
        ("plain", None),
        ("sealed", Some(BodyKey::from_bytes(&[7; 32]))),
    ] {
        let journal = journal(&scratch.path().join(label), key).await?;
        let tree = journal.raw_tree_for_tests("records")?;
        for (n, entry) in tree.iter().enumerate() {
            let (_, value) = entry?;
            write(&stored, &format!("{label}-{}", n + 1), &value)?;
        }
    }

    let plain = Journal::open(&scratch.path().join("plain"), JournalOptions::default())?;
    let all: Vec<_> = (1..=plain.head())
        .filter_map(|seq| plain.get(seq).transpose())
        .collect::<Result<_, _>>()?;
    let frames = [
        Frame::Hello {
            version: 2,
            min_version: 1,
            node: "primary-1".into(),
            epoch: 3,
            token: b"shared secret".to_vec(),
        },
        Frame::Welcome {
            version: 2,
            node: "replica-1".into(),
            epoch: 3,
            last_durable: 5,
            last_chain: [9; 32],
        },
        Frame::Refused {
            reason: "stale epoch".into(),
        },
        Frame::Records {
            records: all[..2].to_vec(),
        },
        Frame::Records { records: all },
        Frame::Ack { seq: 8 },
        Frame::Heartbeat {
            time_ms: T0,
            head: 8,
        },
        Frame::Applied { seq: 7 },
    ];
    let dir = args.corpus.join("replication_frame");
    for (n, f) in frames.iter().enumerate() {
        write(&dir, &format!("frame-{}", n + 1), &frame::encode(f)?)?;
    }
    println!("seeds written under {}", args.corpus.display());
    Ok(())
}
