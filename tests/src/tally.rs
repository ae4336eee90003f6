//! Counting acknowledged messages where they must be: in a site's Maildir (by Message-ID)
//! and in a journal; and polling a condition with a deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use levee_journal::{Record, RecordKind};
use levee_proxy::mailstack::MailStack;
use serde_json::Value;

/// The Message-ID of a stored message (the first `Message-ID: <…>` header).
pub fn message_id(message: &[u8]) -> Option<String> {
    let needle = b"message-id: <";
    let start = message
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))?
        + needle.len();
    let end = start + message[start..].iter().position(|&b| b == b'>')?;
    Some(String::from_utf8_lossy(&message[start..end]).into_owned())
}

/// How many times each Message-ID is in `user`'s INBOX.
pub fn inbox_counts(stack: &MailStack, user: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in stack.inbox_messages(user).expect("read maildir") {
        let id = message_id(&message).unwrap_or_else(|| "<no Message-ID>".into());
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The Maildir file of `user`'s INBOX message with `message_id`.
pub fn maildir_file(stack: &MailStack, user: &str, message_id: &str) -> std::path::PathBuf {
    let needle = format!("Message-ID: <{message_id}>");
    for sub in ["new", "cur"] {
        let dir = stack.maildir(user).join(sub);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            if crate::contains(&bytes, needle.as_bytes()) {
                return entry.path();
            }
        }
    }
    panic!("{message_id} is not in {user}'s Maildir");
}

/// The Message-ID of every message record, in journal order ("" where it has none).
pub fn message_ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Message(m) => Some(m.message_id.clone().unwrap_or_default()),
            _ => None,
        })
        .collect()
}

/// IDs not exactly once in `counts`: (missing, duplicated with their count).
pub fn exactly_once(ids: &[String], counts: &HashMap<String, usize>) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    for id in ids {
        match counts.get(id).copied().unwrap_or(0) {
            0 => missing.push(id.clone()),
            1 => {}
            n => duplicated.push(format!("{id} ×{n}")),
        }
    }
    duplicated.sort();
    (missing, duplicated)
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `secs` with `what`
/// and the `context` it computes then.
pub fn wait_until<T>(
    secs: u64,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {secs} s\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number at `pointer` in `value`; panics naming both when there is none.
pub fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {value}"))
}
