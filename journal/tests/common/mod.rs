//! Helpers shared by the journal's integration tests.
#![allow(dead_code)]

use levee_journal::{
    AuditRecord, ClientInfo, Journal, JournalOptions, MessageRecord, NewRecord, RecordKind,
};

/// 2024-03-01T12:00:00Z.
pub const T0: u64 = 1_709_294_400_000;

pub fn open(dir: &std::path::Path) -> Journal {
    Journal::open(dir, JournalOptions::default()).expect("open journal")
}

pub fn message(from: &str, to: &[&str], id: Option<&str>, body: &[u8], time_ms: u64) -> NewRecord {
    NewRecord {
        time_ms,
        kind: RecordKind::Message(MessageRecord {
            mail_from: from.to_owned(),
            rcpt_to: to.iter().map(|s| (*s).to_owned()).collect(),
            client: ClientInfo {
                addr: Some("192.0.2.7:40000".into()),
                helo: Some("mx.example.net".into()),
                authenticated_user: None,
                listener: "inbound".into(),
                tls: true,
            },
            message_id: id.map(str::to_owned),
            body: body.to_vec(),
        }),
    }
}

pub fn simple(n: u64) -> NewRecord {
    let body = format!("Subject: message {n}\r\n\r\nbody of message {n}\r\n");
    message(
        "sender@example.org",
        &["rcpt@example.net"],
        Some(&format!("<m{n}@example.org>")),
        body.as_bytes(),
        T0 + n,
    )
}

pub fn audit(detail: &str) -> NewRecord {
    NewRecord {
        time_ms: T0,
        kind: RecordKind::Audit(AuditRecord {
            actor: "officer@example.org".into(),
            action: "export".into(),
            detail: detail.into(),
        }),
    }
}
