//! Whether Postfix and Dovecot are installed, and installing them with apt-get for
//! `levee demo` on a fresh Debian machine.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::MailStackError;
use super::process;

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
