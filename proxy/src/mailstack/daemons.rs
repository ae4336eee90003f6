//! Starting and stopping the two daemons of a [`MailStack`].
//!
//! Dovecot runs as our child (`dovecot -F`) in a process group of its own: killing the group is
//! an exact simulated crash (killing only the master would leave logged-in sessions alive for
//! 30 s). Postfix is started the supported way (`postfix -c DIR start`, which runs its integrity
//! checks and creates the queue); its master makes itself a session leader, so its pid is also
//! the process group to kill.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{self, Greeting};
use super::setup::{self, READY_TIMEOUT};
use super::{MailStack, MailStackError};

/// Bound on a kill taking effect (normally a few milliseconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl MailStack {
    /// Starts Dovecot (same ports as before) and waits until IMAP, LMTP and auth answer.
    /// Removes a stale `master.pid` left by [`MailStack::kill_dovecot`]. No-op if running.
    pub fn start_dovecot(&mut self) -> Result<(), MailStackError> {
        if let Some(child) = &mut self.dovecot
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        self.dovecot = None;
        // After SIGKILL the pid file stays and the next start would say "already running".
        let _ = fs::remove_file(self.layout.dovecot_run().join("master.pid"));
        let conf = self.layout.dovecot_conf();
        let log = self.layout.dovecot_stderr();
        let (out, err) = process::log_stdio(&log)
            .map_err(MailStackError::io(format!("opening {}", log.display())))?;
        let child = Command::new(setup::binary("dovecot"))
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(MailStackError::io("spawning dovecot"))?;
        self.dovecot = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let checks = [
            (self.imap_addr(), Greeting::Imap),
            (self.lmtp_addr(), Greeting::Smtp),
            (MailStack::addr(self.ports.auth), Greeting::Connect),
        ];
        for (addr, greeting) in checks {
            let child = self.dovecot.as_mut().expect("just spawned");
            let res = process::wait_greeting(addr, greeting, deadline, || match child.try_wait() {
                Ok(Some(status)) => Err(format!("dovecot exited: {status}")),
                _ => Ok(()),
            });
            if let Err(detail) = res {
                let _ = self.kill_dovecot();
                return Err(MailStackError::NotReady {
                    daemon: "dovecot",
                    detail,
                    log_tail: self.dovecot_log(),
                });
            }
        }
        Ok(())
    }

    /// SIGKILLs Dovecot's whole process group (a simulated crash) and waits until IMAP and LMTP
    /// refuse connections. No-op if not running.
    pub fn kill_dovecot(&mut self) -> Result<(), MailStackError> {
        let Some(mut child) = self.dovecot.take() else {
            return Ok(());
        };
        let pgid = child.id();
        let killed = process::kill_group_and_wait(pgid, STOP_TIMEOUT);
        // Reap the master so it does not linger as a zombie of ours.
        let _ = child.kill();
        let _ = child.wait();
        killed.map_err(|detail| MailStackError::StopFailed {
            daemon: "dovecot",
            detail,
        })?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        for addr in [self.imap_addr(), self.lmtp_addr()] {
            process::wait_refused(addr, deadline).map_err(|detail| MailStackError::StopFailed {
                daemon: "dovecot",
                detail,
            })?;
        }
        Ok(())
    }

    /// Starts Postfix (same ports as before) and waits until both smtpd listeners greet.
    /// No-op if running.
    pub fn start_postfix(&mut self) -> Result<(), MailStackError> {
        if self.postfix_master.is_some_and(process::pid_alive) {
            return Ok(());
        }
        self.postfix_master = None;
        let dir = self.layout.postfix_dir();
        // Absolute path: `postfix -c relative/dir` silently does nothing useful.
        let dir = dir
            .canonicalize()
            .map_err(MailStackError::io(format!("resolving {}", dir.display())))?;
        let start_log = self.layout.postfix_start_log();
        let mut cmd = Command::new(setup::binary("postfix"));
        cmd.arg("-c").arg(&dir).arg("start");
        let status = process::run_logged(&mut cmd, &start_log)
            .map_err(MailStackError::io("running postfix start"))?;
        let command = format!("postfix -c {} start", dir.display());
        if !status.success() {
            return Err(MailStackError::CommandFailed {
                daemon: "postfix",
                command,
                status: status.to_string(),
                log_tail: self.postfix_log(),
            });
        }
        let pid_file = self.layout.postfix_master_pid();
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            return Err(MailStackError::NotReady {
                daemon: "postfix",
                detail: format!(
                    "`{command}` succeeded but {} holds no pid",
                    pid_file.display()
                ),
                log_tail: self.postfix_log(),
            });
        };
        self.postfix_master = Some(pid);

        let deadline = Instant::now() + READY_TIMEOUT;
        for addr in [self.smtp_addr(), self.submission_addr()] {
            let res = process::wait_greeting(addr, Greeting::Smtp, deadline, || {
                if process::pid_alive(pid) {
                    Ok(())
                } else {
                    Err(format!("postfix master (pid {pid}) exited"))
                }
            });
            if let Err(detail) = res {
                let _ = self.stop_postfix();
                return Err(MailStackError::NotReady {
                    daemon: "postfix",
                    detail,
                    log_tail: self.postfix_log(),
                });
            }
        }
        Ok(())
    }

    /// Kills Postfix's whole process group (master, smtpd, qmgr, lmtp, ...) with SIGKILL and
    /// waits until both SMTP ports refuse connections. Fast (milliseconds, unlike
    /// `postfix stop`) and complete; mail already queued stays in the queue for the next start.
    /// No-op if not running.
    pub fn stop_postfix(&mut self) -> Result<(), MailStackError> {
        let Some(pid) = self.postfix_master.take() else {
            return Ok(());
        };
        process::kill_group_and_wait(pid, STOP_TIMEOUT).map_err(|detail| {
            MailStackError::StopFailed {
                daemon: "postfix",
                detail,
            }
        })?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        for addr in [self.smtp_addr(), self.submission_addr()] {
            process::wait_refused(addr, deadline).map_err(|detail| MailStackError::StopFailed {
                daemon: "postfix",
                detail,
            })?;
        }
        Ok(())
    }
}
