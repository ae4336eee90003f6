//! What a failed run leaves for whoever reads it: every copy of a doubled or missing
//! message (the top of each, where levee's trace line names its journal record), and
//! levee's log lines about that record.

use levee_proxy::mailstack::MailStack;
use levee_tests::contains;

/// The copies of `id` in `user`'s INBOX at `stack`, each as its first lines.
pub fn copies(stack: &MailStack, user: &str, id: &str) -> Vec<String> {
    let needle = format!("Message-ID: <{id}>");
    stack
        .inbox_messages(user)
        .unwrap_or_default()
        .iter()
        .filter(|m| contains(m, needle.as_bytes()))
        .map(|m| {
            String::from_utf8_lossy(m)
                .lines()
                .take(6)
                .collect::<Vec<_>>()
                .join("\n    ")
        })
        .collect()
}

/// The lines of `log` that name record `seq` (`seq=N`, `seq: N` or its trace id `LN.`).
pub fn log_lines(log: &str, seq: u64) -> Vec<String> {
    let keys = [
        format!("seq={seq} "),
        format!("seq={seq}\n"),
        format!("seq: {seq}"),
        format!("L{seq}."),
    ];
    log.lines()
        .map(|l| format!("{l}\n"))
        .filter(|l| keys.iter().any(|k| l.contains(k.as_str())))
        .map(|l| l.trim_end().to_string())
        .take(20)
        .collect()
}
