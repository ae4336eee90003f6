//! Starting and stopping the two daemons of a [`MailStack`].
//!
//! Both run in the foreground as our children ([`Daemon`]): `dovecot -F` and
//! `postfix -c DIR start-fg` (postfix-script then runs the master in the foreground). Stopping
//! is always SIGKILL of the whole daemon: exact, a few milliseconds, and what a crash looks like
//! (killing only Dovecot's master would leave logged-in sessions alive for 30 s).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::install;
use super::process::{self, Daemon, Greeting};
use super::setup::{self, READY_TIMEOUT};
use super::{MailStack, MailStackError};

/// Bound on a kill taking effect (normally a few milliseconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a pid file (Postfix pads it with spaces).
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Learns the master's host pid once the daemon answers, and in namespace mode replaces the
/// pid file's content (the namespace pid, 1) with it: `postfix stop`, `doveadm stop` and
/// friends would otherwise signal the host's PID 1.
fn record_master(daemon: &mut Daemon, pid_file: &Path, postfix_style: bool) -> Result<(), String> {
    let master = if daemon.namespaced() {
        let pid = daemon
            .root_pid()
            .ok_or("cannot find the daemon's master process")?;
        let text = if postfix_style {
            format!("{pid:>10}\n")
        } else {
            format!("{pid}\n")
        };
        fs::write(pid_file, text).map_err(|e| format!("rewriting {}: {e}", pid_file.display()))?;
        pid
    } else if postfix_style {
        // The master made itself a session leader; its pid is only in its pid file.
        read_pid(pid_file).ok_or_else(|| format!("{} holds no pid", pid_file.display()))?
    } else {
        daemon.root_pid().ok_or("no pid")?
    };
    daemon.set_master(master);
    Ok(())
}

impl MailStack {
    /// Starts Dovecot (same ports as before) and waits until IMAP, LMTP and auth answer.
    /// Removes a stale `master.pid` left by [`MailStack::kill_dovecot`]. No-op if running.
    pub fn start_dovecot(&mut self) -> Result<(), MailStackError> {
        if self.dovecot.as_mut().is_some_and(Daemon::is_running) {
            return Ok(());
        }
        let _ = self.kill_dovecot();
        // After SIGKILL the pid file stays and the next start would say "already running".
        let pid_file = self.layout.dovecot_run().join("master.pid");
        let _ = fs::remove_file(&pid_file);
        let conf = self.layout.dovecot_conf();
        let args = [OsStr::new("-F"), OsStr::new("-c"), conf.as_os_str()];
        let daemon = Daemon::spawn(
            &install::binary("dovecot"),
            &args,
            &self.layout.dovecot_stderr(),
        )
        .map_err(MailStackError::io("spawning dovecot"))?;
        self.dovecot = Some(daemon);

        let deadline = Instant::now() + READY_TIMEOUT;
        let checks = [
            (self.imap_addr(), Greeting::Imap),
            (self.lmtp_addr(), Greeting::Smtp),
            (MailStack::addr(self.ports.auth), Greeting::Connect),
        ];
        let mut ready = Ok(());
        for (addr, greeting) in checks {
            let daemon = self.dovecot.as_mut().expect("just spawned");
            ready = process::wait_greeting(addr, greeting, deadline, || daemon.check_running());
            if ready.is_err() {
                break;
            }
        }
        if ready.is_ok() {
            ready = record_master(self.dovecot.as_mut().expect("spawned"), &pid_file, false);
        }
        if let Err(detail) = ready {
            let _ = self.kill_dovecot();
            return Err(MailStackError::NotReady {
                daemon: "dovecot",
                detail,
                log_tail: self.dovecot_log(),
            });
        }
        Ok(())
    }

    /// Freezes Dovecot and all its processes (SIGSTOP): connections stay open and the
    /// kernel still accepts new ones, but nothing answers: a hung server. [`kill_dovecot`]
    /// ends it.
    ///
    /// [`kill_dovecot`]: MailStack::kill_dovecot
    pub fn freeze_dovecot(&mut self) -> Result<(), MailStackError> {
        let daemon = self.dovecot.as_ref().ok_or(MailStackError::StopFailed {
            daemon: "dovecot",
            detail: "not running".into(),
        })?;
        daemon
            .signal_all("STOP")
            .map_err(|detail| MailStackError::StopFailed {
                daemon: "dovecot",
                detail,
            })
    }

    /// Lets Dovecot go on after [`MailStack::freeze_dovecot`] (SIGCONT): a slow server.
    pub fn thaw_dovecot(&mut self) -> Result<(), MailStackError> {
        let daemon = self.dovecot.as_ref().ok_or(MailStackError::StopFailed {
            daemon: "dovecot",
            detail: "not running".into(),
        })?;
        daemon
            .signal_all("CONT")
            .map_err(|detail| MailStackError::StopFailed {
                daemon: "dovecot",
                detail,
            })
    }

    /// SIGKILLs Dovecot and all its processes (a simulated crash) and waits until IMAP and LMTP
    /// refuse connections. No-op if not running.
    pub fn kill_dovecot(&mut self) -> Result<(), MailStackError> {
        let Some(daemon) = self.dovecot.take() else {
            return Ok(());
        };
        let fail = |detail| MailStackError::StopFailed {
            daemon: "dovecot",
            detail,
        };
        daemon.kill(STOP_TIMEOUT).map_err(fail)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        for addr in [self.imap_addr(), self.lmtp_addr()] {
            process::wait_refused(addr, deadline).map_err(fail)?;
        }
        Ok(())
    }

    /// Starts Postfix (same ports as before) and waits until both smtpd listeners greet.
    /// No-op if running.
    pub fn start_postfix(&mut self) -> Result<(), MailStackError> {
        if self.postfix.as_mut().is_some_and(Daemon::is_running) {
            return Ok(());
        }
        let _ = self.stop_postfix();
        let dir = self.layout.postfix_dir();
        // Absolute path: `postfix -c relative/dir` silently does nothing useful.
        let dir = dir
            .canonicalize()
            .map_err(MailStackError::io(format!("resolving {}", dir.display())))?;
        if setup::prepare_postfix_dirs(&self.layout) {
            let quick = self.layout.postfix_queue().join("quick-start");
            fs::write(&quick, "")
                .map_err(MailStackError::io(format!("writing {}", quick.display())))?;
        }
        // A pid file left by a killed master names a dead (or reused) pid.
        let pid_file = self.layout.postfix_master_pid();
        let _ = fs::remove_file(&pid_file);
        let args = [OsStr::new("-c"), dir.as_os_str(), OsStr::new("start-fg")];
        let daemon = Daemon::spawn(
            &install::binary("postfix"),
            &args,
            &self.layout.postfix_start_log(),
        )
        .map_err(MailStackError::io(format!(
            "spawning postfix -c {} start-fg",
            dir.display()
        )))?;
        self.postfix = Some(daemon);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = Ok(());
        for addr in [self.smtp_addr(), self.submission_addr()] {
            let daemon = self.postfix.as_mut().expect("just spawned");
            ready =
                process::wait_greeting(addr, Greeting::Smtp, deadline, || daemon.check_running());
            if ready.is_err() {
                break;
            }
        }
        if ready.is_ok() {
            // The master writes its pid file before it opens the listeners that just answered.
            ready = record_master(self.postfix.as_mut().expect("spawned"), &pid_file, true);
        }
        if let Err(detail) = ready {
            let _ = self.stop_postfix();
            return Err(MailStackError::NotReady {
                daemon: "postfix",
                detail,
                log_tail: self.postfix_log(),
            });
        }
        Ok(())
    }

    /// SIGKILLs Postfix and all its processes (master, smtpd, qmgr, lmtp, ...) and waits until
    /// both SMTP ports refuse connections. Fast (milliseconds, unlike `postfix stop`) and
    /// complete; mail already queued stays in the queue for the next start. No-op if not running.
    pub fn stop_postfix(&mut self) -> Result<(), MailStackError> {
        let Some(daemon) = self.postfix.take() else {
            return Ok(());
        };
        let fail = |detail| MailStackError::StopFailed {
            daemon: "postfix",
            detail,
        };
        daemon.kill(STOP_TIMEOUT).map_err(fail)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        for addr in [self.smtp_addr(), self.submission_addr()] {
            process::wait_refused(addr, deadline).map_err(fail)?;
        }
        Ok(())
    }
}
