//! What thousands of sessions need of the machine and of levee's config: open files for
//! this bench and everything it starts, and levee's connection limits and timeouts.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::SESSIONS_PER_USER;

/// levee's open files besides its sessions: listeners, journal, log, metrics, health
/// checks, replication, with room to spare (an idle levee holds about 20).
const FILES_SPARE: u64 = 256;

/// Sessions of a hibernating run that may not have hibernated yet while they are opened
/// (each holds a second socket until it does).
const AWAKE_AT_ONCE: usize = 2000;

/// Open files the process that needs the most (levee) needs for `imap` IMAP sessions, or
/// `smtp` SMTP sessions (they are never open at once): two sockets per session (the
/// client's and the server's; one once it hibernates) and one per user for the mailbox
/// levee follows. The bench itself holds one socket per session, Dovecot's login process
/// at most one per session of the yardstick.
pub(crate) fn files_needed(imap: usize, smtp: usize, hibernating: bool) -> u64 {
    let users = imap.div_ceil(SESSIONS_PER_USER) as u64;
    let imap_files = match hibernating {
        true => (imap + imap.min(AWAKE_AT_ONCE)) as u64,
        false => 2 * imap as u64,
    };
    imap_files.max(2 * smtp as u64) + users + FILES_SPARE
}

/// The most IMAP sessions for which `limit` open files are enough.
pub(crate) fn sessions_within(limit: u64) -> u64 {
    let per_user = 2 * SESSIONS_PER_USER as u128 + 1;
    let sessions = u128::from(limit.saturating_sub(FILES_SPARE)) * SESSIONS_PER_USER as u128;
    u64::try_from(sessions / per_user).unwrap_or(u64::MAX)
}

/// This process's limit on open files (`RLIMIT_NOFILE`), before and after
/// [`raise_open_files`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenFiles {
    /// Soft and hard limit found.
    pub before: (u64, u64),
    /// Soft and hard limit now.
    pub now: (u64, u64),
}

impl std::fmt::Display for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ((soft, hard), (soft_now, hard_now)) = (self.before, self.now);
        if self.before == self.now {
            write!(f, "{soft} (hard {hard}), left as found")
        } else {
            write!(
                f,
                "raised from {soft} (hard {hard}) to {soft_now} (hard {hard_now}) by the bench itself"
            )
        }
    }
}

/// The soft and hard limit on open files of this process, from `/proc/self/limits`.
fn open_files() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open files line in /proc/self/limits")?;
    let number = |word: Option<&str>| match word {
        Some("unlimited") => Ok(u64::MAX),
        Some(n) => n.parse().context("open files limit"),
        None => bail!("open files limit: {line:?}"),
    };
    let mut words = line.split_whitespace().skip(3);
    Ok((number(words.next())?, number(words.next())?))
}

/// Raises this process's soft and hard limit on open files to at least `need`, so that
/// what it starts afterwards (levee, Postfix, Dovecot) inherits the room. The workspace
/// denies unsafe code, so `prlimit(1)` (util-linux) sets it on this process from outside;
/// raising the hard limit needs root.
pub(crate) fn raise_open_files(need: u64) -> Result<OpenFiles> {
    let before = open_files()?;
    if before.0 >= need {
        return Ok(OpenFiles {
            before,
            now: before,
        });
    }
    let hard = before.1.max(need);
    let hard_text = if hard == u64::MAX {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={need}:{hard_text}"))
        .output()
        .context("running prlimit (util-linux) to raise the open files limit")?;
    let now = open_files()?;
    if !out.status.success() || now.0 < need {
        bail!(
            "cannot raise the open files limit from {} (hard {}) to the {need} needed: \
             prlimit says {:?} (raising the hard limit needs root with CAP_SYS_RESOURCE); \
             raise it beforehand (ulimit -Hn {need}; ulimit -n {need}), or ask for fewer \
             sessions: {} IMAP sessions fit in {} open files",
            before.0,
            before.1,
            String::from_utf8_lossy(&out.stderr).trim(),
            sessions_within(before.1),
            before.1,
        );
    }
    Ok(OpenFiles { before, now })
}

/// levee's IMAP sessions at once in the bench's config: every one of `sessions`, with room
/// for the implicit-TLS ones still closing.
pub(crate) fn imap_connections(sessions: usize) -> usize {
    (2 * sessions).max(10_000)
}

/// The bench's levee config: `[imap]` with plaintext LOGIN allowed (levee's STARTTLS
/// listener, loopback only), its `*_timeout` keys dropped (levee's defaults) and room for
/// `sessions` from one address; `[smtp]` with `command_timeout` dropped (the default
/// keeps a silent client 5 minutes) and no limit per address.
pub(crate) fn levee_config_edited(text: &str, sessions: usize, hibernate: Option<&str>) -> String {
    let mut imap = format!(
        "allow_plaintext_auth = true\nmax_connections = {}\nmax_connections_per_ip = 0\n",
        imap_connections(sessions)
    );
    if let Some(after) = hibernate {
        imap.push_str(&format!("hibernate_after = \"{after}\"\n"));
    }
    let text = section_edited(text, "imap", |l| l.contains("_timeout"), &imap);
    section_edited(
        &text,
        "smtp",
        |l| {
            l.starts_with("command_timeout")
                || l.starts_with("max_connections ")
                || l.starts_with("max_connections_per_ip")
        },
        "max_connections = 10000\nmax_connections_per_ip = 0\n",
    )
}

/// `text` with the lines of its `[name]` table for which `drop` holds removed, and `add`
/// put first in it.
fn section_edited(text: &str, name: &str, drop: impl Fn(&str) -> bool, add: &str) -> String {
    let header = format!("[{name}]\n");
    let Some(head) = text
        .match_indices(&header)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || text[..i].ends_with('\n'))
    else {
        return format!("{text}\n{header}{add}");
    };
    let body = head + header.len();
    let end = text[body..]
        .find("\n[")
        .map_or(text.len(), |i| body + i + 1);
    let kept: String = text[body..end]
        .lines()
        .filter(|line| !drop(line.trim_start()))
        .map(|line| format!("{line}\n"))
        .collect();
    format!("{}{header}{add}{kept}{}", &text[..head], &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_edit_keeps_the_rest() {
        let text = "[smtp]\nhostname = \"h\"\ncommand_timeout = \"5s\"\nconnect_timeout = \"2s\"\n\n\
                    [[smtp.listen]]\naddr = \"y\"\n\n[imap]\nlogin_timeout = \"10s\"\nconnect_timeout = \"2s\"\n\n\
                    [[imap.listen]]\naddr = \"x\"\n";
        assert_eq!(
            levee_config_edited(text, 1000, None),
            "[smtp]\nmax_connections = 10000\nmax_connections_per_ip = 0\nhostname = \"h\"\n\
             connect_timeout = \"2s\"\n\n[[smtp.listen]]\naddr = \"y\"\n\n[imap]\n\
             allow_plaintext_auth = true\nmax_connections = 10000\nmax_connections_per_ip = 0\n\n\
             [[imap.listen]]\naddr = \"x\"\n"
        );
        assert!(levee_config_edited(text, 20_000, None).contains("max_connections = 40000\n"));
    }

    #[test]
    fn files_for_many_sessions() {
        assert_eq!(files_needed(1000, 1000, false), 2356);
        assert_eq!(files_needed(10_000, 1000, false), 21_256);
        assert_eq!(sessions_within(20_000), 9401);
        assert!(files_needed(9401, 1000, false) <= 20_000);
        assert!(files_needed(9402, 1000, false) > 20_000);
        // Hibernating sessions hold one socket each once they hibernate.
        assert_eq!(files_needed(10_000, 1000, true), 13_256);
        assert!(
            levee_config_edited("[imap]\n", 10, Some("1s")).contains("hibernate_after = \"1s\"\n")
        );
    }
}
