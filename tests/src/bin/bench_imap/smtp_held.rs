//! SMTP sessions held open through levee: what each costs it in memory.
//!
//! `--smtp-sessions` connections to levee's relay listener, opened by a few threads at once,
//! each past its greeting and EHLO, then silent. levee opens a session to the upstream
//! Postfix while it greets a client and keeps it for the client's transactions, so each
//! held session is two connections of levee's; the bench counts the upstream ones. levee's
//! RSS is read before (levee freshly started) and after, 2 s after the last EHLO.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use levee_tests::Site;
use levee_tests::load::{HttpClient, SmtpSession};

use super::proc_kib;
use super::sessions::{Rss, SETTLE, sessions_active};

/// Threads opening the sessions.
const OPENERS: usize = 10;

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Held {
    pub rss: Rss,
    /// Opening every session (connect, greeting, EHLO answered).
    pub open: Duration,
    /// levee's connections to the upstream Postfix while they were held.
    pub upstream: usize,
}

/// Established IPv4 TCP connections whose remote port is `port` (`/proc/net/tcp`).
fn established_to(port: u16) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let to = format!("{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            let remote = fields.next().unwrap_or_default();
            let state = fields.next().unwrap_or_default();
            state == "01" && remote.rsplit(':').next() == Some(to.as_str())
        })
        .count())
}

/// Opens `n` SMTP sessions through `site`'s levee, reads its RSS, checks that levee
/// counts them all, and closes them.
pub(crate) fn measure(site: &Site, n: usize) -> Result<Held> {
    let pid = site.levee.pid().context("levee runs as a child")?;
    let relay = site.levee.ports.relay;
    let mut http = HttpClient::new(site.levee.ports.metrics);
    std::thread::sleep(SETTLE);
    let base = proc_kib(pid, "VmRSS")?;
    let upstream_before = established_to(site.stack.smtp_addr().port())?;
    let started = Instant::now();
    let sessions = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..OPENERS)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(OPENERS)
                        .map(|i| {
                            SmtpSession::connect(relay)
                                .with_context(|| format!("SMTP session {i} of {n} to levee"))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for opener in openers {
            all.extend(opener.join().expect("SMTP opener panicked")?);
        }
        anyhow::Ok(all)
    })?;
    let open = started.elapsed();
    std::thread::sleep(SETTLE);
    let held = proc_kib(pid, "VmRSS")?;
    let upstream = established_to(site.stack.smtp_addr().port())?.saturating_sub(upstream_before);
    let active = sessions_active(&mut http, "smtp")?;
    ensure!(
        active == n as f64,
        "levee counts {active} SMTP sessions, not the {n} held"
    );
    eprintln!(
        "{n} SMTP sessions open in {:.1} s ({upstream} upstream connections): levee RSS {base} -> {held} KiB",
        open.as_secs_f64()
    );
    drop(sessions);
    Ok(Held {
        rss: Rss { base, held, n },
        open,
        upstream,
    })
}
