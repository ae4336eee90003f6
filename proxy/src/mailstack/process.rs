//! Process plumbing for the stacks: spawning with output to a log file, killing whole process
//! groups, and waiting (bounded) for listeners to greet or to refuse.
//!
//! Each daemon runs in a PID namespace of its own when the kernel allows it (`unshare --pid`,
//! root with CAP_SYS_ADMIN): its master is then the namespace's init, and SIGKILL to that one
//! process makes the kernel kill *and reap* everything in the namespace at once. Without it,
//! killed daemons' children are orphaned to PID 1, and a container's PID 1 (as on the machines
//! this was written on) never reaps them: every stop would leave zombies until the pid space runs
//! out. Where `unshare` is not permitted (e.g. an unprivileged Docker container), the daemon runs
//! directly and is killed children-first (see [`kill_tree`]).
//!
//! Signals go through `/bin/kill` because `libc::kill` is `unsafe` and the workspace denies
//! unsafe code; a process-group kill is a handful of calls per test, so the fork is cheap enough.
//! Liveness is read from `/proc` rather than by signalling, which also lets zombies (dead,
//! holding no sockets, maybe never reaped by a container's PID 1) count as gone.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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

/// The last `lines` lines of a (possibly missing) log file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILL to every process in group `pgid`. Errors (group already gone) are ignored: the
/// caller checks the outcome by looking at the group again.
pub(crate) fn kill_group(pgid: u32) {
    let _ = signal_group(pgid, "KILL");
}

/// Sends `signal` (a name such as `STOP`) to every process in group `pgid`.
pub(crate) fn signal_group(pgid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("/bin/kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// Processes whose process group is `pgid`; zombies only if `with_zombies`.
pub(crate) fn group_pids(pgid: u32, with_zombies: bool) -> Vec<u32> {
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
        if pgrp == Some(pgid) && (with_zombies || (state != "Z" && state != "X")) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL to the given pids (errors for already-gone pids are ignored).
pub(crate) fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("/bin/kill")
        .args(["-s", "KILL", "--"])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills group `pgid` and waits until none of its processes is alive.
pub(crate) fn kill_group_and_wait(pgid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        kill_group(pgid);
        let left = group_pids(pgid, false);
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

/// SIGKILLs a daemon whose master `leader` leads process group `leader`: first every other
/// member, until the master has reaped them, then the master and whatever is left.
///
/// Killing the whole group at once would orphan the children, and a container's PID 1 may never
/// reap orphans: each kill would leave zombies behind until the pid space runs out. Killing the
/// children first takes a few milliseconds more; clients see the same thing (connections reset).
pub(crate) fn kill_tree(leader: u32, timeout: Duration) -> Result<(), String> {
    let reap_deadline = Instant::now() + Duration::from_millis(500);
    while pid_alive(leader) && Instant::now() < reap_deadline {
        let others: Vec<u32> = group_pids(leader, true)
            .into_iter()
            .filter(|&p| p != leader)
            .collect();
        if others.is_empty() {
            break;
        }
        let live: Vec<u32> = others.into_iter().filter(|&p| pid_alive(p)).collect();
        kill_pids(&live);
        sleep(Duration::from_millis(1));
    }
    kill_group_and_wait(leader, timeout)
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

/// Whether `unshare --pid --fork` works here (tried once per process).
fn pid_namespaces() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A daemon started in the foreground as our child, in a process group of its own (so a
/// terminal's Ctrl-C does not reach it), with output appended to a log file.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// `unshare` (namespace mode) or the daemon command itself.
    child: Child,
    namespaced: bool,
    /// Host pid of the daemon's master, once known.
    master: Option<u32>,
}

impl Daemon {
    pub fn spawn(program: &Path, args: &[&OsStr], log: &Path) -> std::io::Result<Daemon> {
        let namespaced = pid_namespaces();
        let mut cmd = if namespaced {
            // --kill-child: should unshare die, the daemon's namespace goes with it.
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let (out, err) = log_stdio(log)?;
        let child = cmd
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(Daemon {
            child,
            namespaced,
            master: None,
        })
    }

    pub fn namespaced(&self) -> bool {
        self.namespaced
    }

    /// `Err` with the exit status if the daemon (or unshare) has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("exited: {status}")),
            _ => Ok(()),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.check_running().is_ok()
    }

    /// Host pid of the process that forms the daemon: the namespace's init (unshare's only
    /// child) or, without namespaces, our child.
    pub fn root_pid(&self) -> Option<u32> {
        if !self.namespaced {
            return Some(self.child.id());
        }
        let parent = self.child.id();
        let entries = fs::read_dir("/proc").ok()?;
        entries.flatten().find_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
    }

    /// Sends `signal` to the daemon's whole process group (every process it started).
    pub fn signal_all(&self, signal: &str) -> Result<(), String> {
        match signal_group(self.child.id(), signal) {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("kill -s {signal}: {status}")),
            Err(err) => Err(format!("kill -s {signal}: {err}")),
        }
    }

    /// Records the master's host pid (what [`Daemon::kill`] aims at).
    pub fn set_master(&mut self, pid: u32) {
        self.master = Some(pid);
    }

    /// SIGKILLs the daemon and everything it started, reaps what is ours, and returns once none
    /// of its processes is alive.
    pub fn kill(mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let master = self.master.or_else(|| self.root_pid());
        let result = match (self.namespaced, master) {
            // The kernel kills and reaps the rest of the namespace.
            (true, Some(init)) => {
                kill_pids(&[init]);
                Ok(())
            }
            (false, Some(master)) => kill_tree(master, timeout),
            (_, None) => Ok(()),
        };
        // A frozen daemon (SIGSTOP) has a frozen child too: once the master is dead, let the
        // child run again so that it can reap it and exit.
        let _ = signal_group(self.child.id(), "CONT");
        // Our child exits once the master is gone (unshare, or postfix-script's shell); let it
        // reap the master before anything kills it.
        while self.is_running() && Instant::now() < deadline {
            sleep(Duration::from_millis(1));
        }
        // Whatever is left gets a moment to die of its SIGKILL, even past the deadline.
        let rest = kill_group_and_wait(
            self.child.id(),
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(2)),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        result.and(rest)
    }
}
