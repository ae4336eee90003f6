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

/// The lines of the mail servers' logs at `stack` about message `id`: Postfix's lines for
/// every queue id that carried it (cleanup names the Message-ID, the rest only the queue
/// id) and Dovecot's deliveries of it.
pub fn mail_log_lines(stack: &MailStack, id: &str) -> Vec<String> {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let postfix = read(stack.dir().join("postfix").join("postfix.log"));
    let dovecot = read(stack.dir().join("dovecot").join("dovecot.log"));
    let needle = format!("<{id}>");
    let queue_ids: Vec<&str> = postfix
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|q| q.len() >= 8 && q.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect();
    let postfix_lines = postfix
        .lines()
        .filter(|l| queue_ids.iter().any(|q| l.contains(&format!(" {q}: "))));
    let dovecot_lines = dovecot.lines().filter(|l| l.contains(&needle));
    postfix_lines
        .chain(dovecot_lines)
        .map(str::to_owned)
        .take(40)
        .collect()
}

/// How many times `id` was handed to the MTA at `stack`: the Postfix queue ids whose
/// cleanup logged its Message-ID, each one SMTP transaction Postfix accepted. A message
/// handed over once but in the INBOX twice was doubled by the mail server itself: Dovecot
/// saved it and then failed its LMTP reply (`421 Shutting down` or a lost connection as it
/// was killed), and Postfix, told nothing certain, delivered it again ("message may be
/// sent more than once"). No proxy in front of Postfix can see or prevent that.
pub fn handed_over(stack: &MailStack, id: &str) -> usize {
    let postfix = std::fs::read_to_string(stack.dir().join("postfix").join("postfix.log"))
        .unwrap_or_default();
    let needle = format!("message-id=<{id}>");
    let mut queue_ids: Vec<&str> = postfix
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    queue_ids.sort_unstable();
    queue_ids.dedup();
    queue_ids.len()
}
