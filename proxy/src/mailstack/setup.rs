//! The on-disk side of a stack: its directory, generated files, Postfix's queue directories,
//! Maildir reading, and cleaning up after stacks whose owner died.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::config::{self, Layout, Ports};
use super::process;
use super::{MailStackError, StackSpec};

/// Bound on a daemon (re)start until all its listeners greet. Normally well under a second.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Rejects names that would break the generated files (passwd-file fields, map keys, paths).
pub(crate) fn validate(spec: &StackSpec) -> Result<(), MailStackError> {
    let bad = |what: &str, v: &str| Err(MailStackError::InvalidSpec(format!("{what} {v:?}")));
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    if !word(&spec.name, "-") || spec.name.len() > 32 {
        return bad("name (letters, digits, '-', at most 32)", &spec.name);
    }
    if !word(&spec.domain, ".-") || !spec.domain.contains('.') {
        return bad("domain", &spec.domain);
    }
    if spec.users.is_empty() {
        return Err(MailStackError::InvalidSpec("no users".into()));
    }
    for (user, pw) in &spec.users {
        // Lower case only: Dovecot lower-cases (%Ln) and the home directory must match.
        if !word(user, "._-") || user.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("user (lower-case letters, digits, '.', '_', '-')", user);
        }
        if pw.is_empty()
            || pw
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return bad("password of user (no ':' or whitespace)", user);
        }
    }
    Ok(())
}

/// Creates a fresh, traversable (0755) directory under the system temp dir.
pub(crate) fn create_root(name: &str) -> Result<PathBuf, MailStackError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("levee-mailstack-{name}-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                // The mail uid (nobody) and Dovecot's users must traverse it; temp dirs are 0700.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(MailStackError::io(format!("chmod {}", dir.display())))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(MailStackError::io(format!("creating {}", dir.display()))(e)),
        }
    }
}

/// Creates the directory tree and writes every generated file.
pub(crate) fn write_files(
    spec: &StackSpec,
    layout: &Layout,
    ports: &Ports,
) -> Result<(), MailStackError> {
    let mkdir = |d: PathBuf| {
        fs::create_dir_all(&d).map_err(MailStackError::io(format!("creating {}", d.display())))
    };
    mkdir(layout.dovecot_dir())?;
    mkdir(layout.postfix_dir())?;
    // Postfix's integrity check creates the queue's subdirectories, but not the queue itself.
    mkdir(layout.postfix_queue())?;
    mkdir(layout.mail_root())?;
    // Homes are created on first use by Dovecot running as nobody:nogroup.
    let uid = process::lookup_id("/etc/passwd", "nobody").unwrap_or(65534);
    let gid = process::lookup_id("/etc/group", "nogroup").unwrap_or(65534);
    std::os::unix::fs::chown(layout.mail_root(), Some(uid), Some(gid)).map_err(
        MailStackError::io(format!("chown {}", layout.mail_root().display())),
    )?;

    let files = [
        (
            layout.dovecot_conf(),
            config::dovecot_conf(spec, layout, ports),
        ),
        (layout.dovecot_passwd(), config::dovecot_passwd(spec)),
        (
            layout.postfix_dir().join("main.cf"),
            config::postfix_main_cf(spec, layout, ports),
        ),
        (
            layout.postfix_dir().join("master.cf"),
            config::postfix_master_cf(ports),
        ),
        (layout.postfix_vmailbox(), config::postfix_vmailbox(spec)),
    ];
    for (path, text) in files {
        process::write_backdated(&path, &text)
            .map_err(MailStackError::io(format!("writing {}", path.display())))?;
    }
    // Dovecot's auth process reads the passwd-file as its unprivileged user.
    fs::set_permissions(layout.dovecot_passwd(), fs::Permissions::from_mode(0o644))
        .map_err(MailStackError::io("chmod passwd-file"))?;
    write_master_user(layout)
}

/// A fresh random master password, written twice and nowhere else: into Dovecot's master
/// passdb (readable by Dovecot's auth process only) and alone into a root-only file for the
/// client that logs in with it.
fn write_master_user(layout: &Layout) -> Result<(), MailStackError> {
    let password: String = rand::random::<[u8; 18]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dovecot = process::lookup_id("/etc/group", "dovecot");
    let files = [
        (
            layout.dovecot_master_users(),
            config::dovecot_master_users(&password),
            0o640,
            dovecot,
        ),
        (
            layout.master_password(),
            format!("{password}\n"),
            0o600,
            None,
        ),
    ];
    for (path, text, mode, group) in files {
        write_private(&path, &text, mode, group)
            .map_err(MailStackError::io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// Writes a file that is never readable by anyone but its owner (and `group`), not even
/// for a moment.
fn write_private(path: &Path, text: &str, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if group.is_some() {
        std::os::unix::fs::fchown(&file, None, group)?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())
}

/// Every file of `maildir/new` and `maildir/cur`, sorted by file name. An IMAP session may move
/// a file from new/ to cur/ while we read; the listing is then simply taken again.
pub(crate) fn read_maildir_inbox(maildir: &Path) -> Result<Vec<Vec<u8>>, MailStackError> {
    let mut attempt = 0;
    'again: loop {
        attempt += 1;
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let dir = maildir.join(sub);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MailStackError::io(format!("listing {}", dir.display()))(e)),
            };
            for entry in entries {
                let entry =
                    entry.map_err(MailStackError::io(format!("listing {}", dir.display())))?;
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    files.push((entry.file_name(), entry.path()));
                }
            }
        }
        files.sort();
        let mut out = Vec::with_capacity(files.len());
        for (_, path) in files {
            match fs::read(&path) {
                Ok(bytes) => out.push(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => {
                    continue 'again;
                }
                Err(e) => return Err(MailStackError::io(format!("reading {}", path.display()))(e)),
            }
        }
        return Ok(out);
    }
}

/// The last lines of each log, with a header naming the file.
pub(crate) fn logs(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("==> {} <==\n{}\n", p.display(), process::log_tail(p, 200)))
        .collect()
}

/// Creates Postfix's queue and data directories with the owners and modes listed in the
/// installed `postfix-files`, and reports whether every entry was understood. If so, the stack
/// starts Postfix in "quick-start" mode: `postfix start-fg` then skips its integrity checks
/// (`post-install create-missing`, `postsuper`, a `find` over the queue), which otherwise cost
/// about 0.6 s per start. Any surprise returns `false` and Postfix does the work itself.
pub(crate) fn prepare_postfix_dirs(layout: &Layout) -> bool {
    let Ok(listing) = fs::read_to_string("/etc/postfix/postfix-files") else {
        return false;
    };
    let (Some(postfix), Some(postdrop)) = (
        process::lookup_id("/etc/passwd", "postfix"),
        process::lookup_id("/etc/group", "postdrop"),
    ) else {
        return false;
    };
    let mut seen = 0;
    for line in listing.lines() {
        // name:type:owner:group:mode[:flags]
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 5 || f[1] != "d" {
            continue;
        }
        let path = if let Some(rest) = f[0].strip_prefix("$queue_directory") {
            PathBuf::from(format!("{}{rest}", layout.postfix_queue().display()))
        } else if let Some(rest) = f[0].strip_prefix("$data_directory") {
            PathBuf::from(format!("{}{rest}", layout.postfix_data().display()))
        } else {
            continue;
        };
        let uid = match f[2] {
            "root" => Some(0),
            "$mail_owner" => Some(postfix),
            _ => return false,
        };
        let gid = match f[3] {
            "-" => None,
            "$setgid_group" => Some(postdrop),
            _ => return false,
        };
        let Ok(mode) = u32::from_str_radix(f[4], 8) else {
            return false;
        };
        let made = fs::create_dir_all(&path)
            .and_then(|()| std::os::unix::fs::chown(&path, uid, gid))
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)));
        if made.is_err() {
            return false;
        }
        seen += 1;
    }
    seen > 0
}

/// Kills the daemons of stacks whose owning process died without dropping them (a test binary
/// killed by a timeout, `kill -9`, an abort) and removes their directories, so leaked daemons
/// do not pile up across runs. A stack directory is named `levee-mailstack-NAME-PID-N`; only
/// stacks whose PID is gone are touched, and only processes whose command line or environment
/// names that directory are killed.
pub(crate) fn reap_stale_stacks() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("levee-mailstack-"))
        else {
            continue;
        };
        let mut parts = rest.rsplit('-');
        let (Some(_n), Some(owner)) = (
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        ) else {
            continue;
        };
        if owner == std::process::id() || process::pid_alive(owner) {
            continue;
        }
        let dir = entry.path();
        let layout = Layout { root: dir.clone() };
        let needle = dir.display().to_string();
        for pid_file in [
            layout.dovecot_run().join("master.pid"),
            layout.postfix_master_pid(),
        ] {
            let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let mentions = |what: &str| {
                fs::read(format!("/proc/{pid}/{what}"))
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains(&needle))
            };
            if pid > 1 && process::pid_alive(pid) && (mentions("cmdline") || mentions("environ")) {
                tracing::warn!(dir = %needle, pid, "killing mail daemon left behind by a dead process");
                // A namespace init takes its namespace with it; a plain-mode master leads its
                // process group.
                process::kill_pids(&[pid]);
                let _ = process::kill_group_and_wait(pid, Duration::from_secs(2));
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
