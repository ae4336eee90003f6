//! Installation checks, the apt-get installer for `levee demo`, and the on-disk side of a stack:
//! its directory, generated files and Maildir reading.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::config::{self, Layout, Ports};
use super::process;
use super::{MailStackError, StackSpec};

/// Bound on a daemon (re)start until all its listeners greet. Normally well under a second.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);

const PACKAGES: &str = "postfix dovecot-imapd dovecot-lmtpd swaks";
const DEBCONF: &str = "postfix postfix/main_mailer_type select No configuration\n";

fn install_command() -> String {
    format!(
        "apt-get update && echo '{}' | debconf-set-selections && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {PACKAGES}",
        DEBCONF.trim_end()
    )
}

/// Absolute path of an executable: PATH first, then the sbin directories a non-login root
/// shell (or a test runner) may lack. Falls back to the bare name.
pub(crate) fn binary(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| PathBuf::from(name))
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Dovecot's helper binaries live here on Debian, in /usr/libexec/dovecot elsewhere.
fn dovecot_helper(name: &str) -> bool {
    ["/usr/lib/dovecot", "/usr/libexec/dovecot"]
        .iter()
        .any(|d| Path::new(d).join(name).is_file())
}

/// Fails, naming every missing package, binary or system user and the command that installs
/// them, unless everything a stack needs is present.
pub fn check_installed() -> Result<(), MailStackError> {
    let mut missing = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            missing.push(what.to_string());
        }
    };
    need(
        find_binary("postfix").is_some(),
        "package postfix (no `postfix` command)",
    );
    need(
        find_binary("postconf").is_some(),
        "package postfix (no `postconf` command)",
    );
    need(
        find_binary("dovecot").is_some(),
        "package dovecot-core (no `dovecot` command; comes with dovecot-imapd)",
    );
    need(
        dovecot_helper("imap"),
        "package dovecot-imapd (no /usr/lib/dovecot/imap)",
    );
    need(
        dovecot_helper("lmtp"),
        "package dovecot-lmtpd (no /usr/lib/dovecot/lmtp)",
    );
    need(
        find_binary("swaks").is_some(),
        "package swaks (no `swaks` command)",
    );
    for user in ["postfix", "dovecot", "dovenull", "nobody"] {
        need(
            process::lookup_id("/etc/passwd", user).is_some(),
            &format!("system user {user} (created by the packages)"),
        );
    }
    for group in ["postdrop", "nogroup"] {
        need(
            process::lookup_id("/etc/group", group).is_some(),
            &format!("system group {group} (created by the packages)"),
        );
    }
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MailStackError::NotInstalled {
            missing: missing.join("; "),
            install_command: install_command(),
        })
    }
}

/// Installs the packages with apt-get (for `levee demo` on a fresh Debian machine): apt-get
/// update, the debconf "No configuration" answer for Postfix (no system main.cf, nothing
/// started), then the install. Prints one progress line per step; apt's own output goes to a log
/// file whose tail is in the error on failure. Needs root.
pub fn install_with_apt() -> Result<(), MailStackError> {
    if process::effective_uid() != Some(0) {
        return Err(MailStackError::NotRoot {
            action: "installing postfix and dovecot with apt-get",
        });
    }
    let log = std::env::temp_dir().join(format!("levee-apt-{}.log", std::process::id()));
    let run = |label: &str, cmd: &mut Command, stdin: Option<&str>| -> Result<(), MailStackError> {
        println!("levee: {label} ...");
        let (out, err) = process::log_stdio(&log)
            .map_err(MailStackError::io(format!("opening {}", log.display())))?;
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(out)
            .stderr(err);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .map_err(MailStackError::io(format!("spawning {label}")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(MailStackError::io(format!("writing to {label}")))?;
        }
        let status = child
            .wait()
            .map_err(MailStackError::io(format!("waiting for {label}")))?;
        if !status.success() {
            return Err(MailStackError::CommandFailed {
                daemon: "apt",
                command: label.to_string(),
                status: status.to_string(),
                log_tail: process::log_tail(&log, 30),
            });
        }
        Ok(())
    };
    run(
        "apt-get update",
        Command::new("apt-get").arg("update"),
        None,
    )?;
    run(
        "debconf-set-selections (postfix: No configuration)",
        &mut Command::new("debconf-set-selections"),
        Some(DEBCONF),
    )?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES.split(' '));
    run(&format!("apt-get install {PACKAGES}"), &mut install, None)?;
    check_installed()?;
    println!(
        "levee: postfix and dovecot installed (apt log: {})",
        log.display()
    );
    Ok(())
}

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
    Ok(())
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
