//! Process plumbing for the stacks: spawning with output to a log file, killing whole process
//! groups, and waiting (bounded) for listeners to greet or to refuse.
//!
//! Signals go through `/bin/kill` because `libc::kill` is `unsafe` and the workspace denies
//! unsafe code; a process-group kill is a handful of calls per test, so the fork is cheap enough.
//! Liveness is read from `/proc` rather than by signalling, which also lets zombies (dead,
//! holding no sockets, maybe never reaped by a container's PID 1) count as gone.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often readiness and shutdown are polled.
const POLL: Duration = Duration::from_millis(5);

/// Opens (appending) a log file for a child's stdout/stderr. A file rather than a pipe: daemons
/// keep the descriptors they were started with, and a pipe would never see EOF.
pub(crate) fn log_stdio(path: &Path) -> std::io::Result<(Stdio, Stdio)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let g = f.try_clone()?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Runs `cmd` to completion with stdin closed and output appended to `log`.
pub(crate) fn run_logged(cmd: &mut Command, log: &Path) -> std::io::Result<ExitStatus> {
    let (out, err) = log_stdio(log)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).status()
}

/// The last `lines` lines of a (possibly missing) log file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILL to every process in group `pgid`. Errors (group already gone) are ignored: the
/// caller checks the outcome with [`wait_group_gone`].
pub(crate) fn kill_group(pgid: u32) {
    let _ = Command::new("/bin/kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let pgrp = f.nth(1).and_then(|s| s.parse::<u32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            out.push(pid);
        }
    }
    out
}

/// Kills group `pgid` and waits until none of its processes is alive.
pub(crate) fn kill_group_and_wait(pgid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        kill_group(pgid);
        let left = group_members(pgid);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "process group {pgid} still has live processes {left:?}"
            ));
        }
        sleep(POLL);
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// What a listener must say first for the daemon behind it to count as ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Greeting {
    /// SMTP or LMTP: `220 ...`, answered with QUIT.
    Smtp,
    /// IMAP: `* OK ...`, answered with LOGOUT.
    Imap,
    /// Accepting the connection is enough (Dovecot's auth protocol).
    Connect,
}

/// One attempt: connect, read the first line, check it, say goodbye.
fn probe(addr: SocketAddr, greeting: Greeting) -> Result<(), String> {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    if let Greeting::Connect = greeting {
        return Ok(());
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading greeting: {e}"))?;
    let (ok, bye) = match greeting {
        Greeting::Smtp => (line.starts_with("220"), "QUIT\r\n"),
        Greeting::Imap => (line.starts_with("* OK"), "a LOGOUT\r\n"),
        Greeting::Connect => (true, ""),
    };
    let _ = (&stream).write_all(bye.as_bytes());
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected greeting {:?}", line.trim_end()))
    }
}

/// Polls until `addr` greets as expected or `deadline` passes. `still_running` is checked
/// between attempts so a daemon that died is reported at once instead of after the timeout.
pub(crate) fn wait_greeting(
    addr: SocketAddr,
    greeting: Greeting,
    deadline: Instant,
    mut still_running: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let err = match probe(addr, greeting) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        still_running()?;
        if Instant::now() >= deadline {
            return Err(format!("{addr} not ready: {err}"));
        }
        sleep(POLL);
    }
}

/// Polls until connecting to `addr` is refused.
pub(crate) fn wait_refused(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(format!("{addr} still accepts connections"));
            }
            _ => sleep(POLL),
        }
    }
}

/// Effective uid of this process, from /proc (no libc call, so no `unsafe`).
pub(crate) fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Numeric id of `name` in an /etc/passwd- or /etc/group-style file.
pub(crate) fn lookup_id(file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// Writes `text` to `path` and back-dates it: Postfix waits about 2 s before trusting a
/// main.cf it considers too new, on every command.
pub(crate) fn write_backdated(path: &Path, text: &str) -> std::io::Result<()> {
    fs::write(path, text)?;
    let f = File::options().write(true).open(path)?;
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
}
