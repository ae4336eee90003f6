//! Many idle sessions: what each costs levee in memory, and how long moving them all takes.
//!
//! Per round, a fresh site pair whose users `user01`, ... share the sessions out, ten
//! each (every session is logged in, has INBOX selected and is in IDLE):
//!
//! 0. A yardstick: as many sessions opened straight at the replica's Dovecot, all at once
//!    (what a migration asks of it), then closed. Then levee is restarted with the bench's
//!    config ([`super::limits::levee_config_edited`]).
//! 1. levee's RSS (`VmRSS` of the child) before and after opening the sessions with
//!    implicit TLS, which are then closed; levee is restarted, and with `--smtp-sessions`
//!    the same for that many SMTP sessions ([`super::smtp_held`]) on a levee restarted
//!    again; then the same without TLS.
//! 2. The primary's Dovecot killed: until every client has read the `EXISTS` levee passes
//!    on once its session is rebuilt at the replica, or its connection closed, and until
//!    `levee_imap_migrations_total` stopped at that count (polled every 10 ms); levee's
//!    RSS again ([`super::moves`]).
//! 3. One message per user through levee's relay listener: until every moved session has
//!    seen an `EXISTS` that counts it. That path is the journal, replication to the
//!    replica, its applier's LMTP delivery and Dovecot's IDLE notification; a yardstick of
//!    the whole chain, not of levee's sessions.
//!
//! Sessions closed, or told `BYE`, `NO` or `BAD`, in step 2 are counted and reported, not
//! fatal; any BYE, NO, BAD or closed connection in step 3 fails the bench, and so does a
//! failover before the kill.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use levee_tests::Site;
use levee_tests::bench::shell;
use levee_tests::imap_load::{self, Security};
use levee_tests::load::HttpClient;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::limits::levee_config_edited;
use super::moves::{follow_moves, reasons, until_each, watch};
use super::smtp_held::{self, Held};
use super::{
    Args, SESSIONS_PER_USER, deliver, kill_primary_dovecot, millis, proc_kib, process_ticks,
    site_pair,
};

/// Settling time before RSS is read.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// levee's RSS before and after opening `n` sessions, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rss {
    pub base: u64,
    pub held: u64,
    pub n: usize,
}

impl Rss {
    /// RSS growth per session, in KiB.
    pub(crate) fn per_session(&self) -> f64 {
        self.held.saturating_sub(self.base) as f64 / self.n.max(1) as f64
    }
}

/// One round.
#[derive(Debug, Clone, Default)]
pub(crate) struct Many {
    pub users: usize,
    /// levee's RSS with and without the plain sessions.
    pub plain: Rss,
    /// The same for the TLS sessions (on a levee process of its own).
    pub tls: Rss,
    /// The SMTP sessions held (on a levee process of their own), with `--smtp-sessions`.
    pub smtp: Option<Held>,
    /// RSS over the base per session once every plain session has moved, in KiB.
    pub moved_kib: f64,
    /// Peak RSS (`VmHWM`) of the round, in KiB.
    pub peak_kib: u64,
    /// Opening the sessions straight at the replica's Dovecot, all at once.
    pub direct_open: Duration,
    /// Opening the plain sessions through levee (connect, LOGIN, SELECT, IDLE).
    pub open: Duration,
    /// Sessions whose connection closed instead of moving, and how.
    pub closed: usize,
    pub closed_why: Option<String>,
    /// Sessions told `BYE`, `NO` or `BAD` during the move, how many of them moved all the
    /// same, and what they were told.
    pub told: usize,
    pub told_then_moved: usize,
    pub told_why: Option<String>,
    /// From the kill until the metric reached its final count.
    pub moved_metric: Duration,
    /// From the kill until the first, the median and the last moved client read their
    /// `EXISTS`.
    pub first_client: Duration,
    pub median_client: Duration,
    pub last_client: Duration,
    /// levee's CPU (utime + stime) from the kill until every session moved, per session.
    pub cpu_us: f64,
    /// From the first new message sent until every moved session saw its user's.
    pub new_mail: Duration,
}

/// The `proto` sample of `levee_sessions_active` (`imap`, `smtp`).
pub(crate) fn sessions_active(http: &mut HttpClient, proto: &str) -> Result<f64> {
    let text = http.get("/metrics")?;
    let label = format!("proto=\"{proto}\"");
    Ok(text
        .lines()
        .find(|l| l.starts_with("levee_sessions_active{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

/// Opens `n` sessions straight at `addr` all at once, then closes them; returns the time
/// until the last was in IDLE.
fn open_direct(
    rt: &Runtime,
    addr: SocketAddr,
    accounts: &[(String, String)],
    n: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let sessions = rt.block_on(imap_load::open_idle(addr, &Security::Plain, accounts, n, n))?;
    let took = started.elapsed();
    rt.block_on(async move { drop(sessions) });
    Ok(took)
}

/// levee's RSS before and after opening `n` idle TLS sessions through the implicit-TLS
/// listener, which are then closed. levee is restarted afterwards, so that memory they
/// freed does not make the next figure look cheaper.
fn tls_memory(
    a: &Args,
    rt: &Runtime,
    primary: &Site,
    accounts: &[(String, String)],
) -> Result<Rss> {
    let n = a.sessions;
    let pid = primary.levee.pid().context("levee runs as a child")?;
    std::thread::sleep(SETTLE);
    let base = proc_kib(pid, "VmRSS")?;
    let tls = Security::tls(&primary.cert_path())?;
    let imaps = primary.levee.ports.imaps;
    let sessions = rt.block_on(imap_load::open_idle(imaps, &tls, accounts, n, a.parallel))?;
    if a.hibernate_after.is_some() {
        until_hibernating(&mut HttpClient::new(primary.levee.ports.metrics), n)?;
    }
    std::thread::sleep(SETTLE);
    let open = proc_kib(pid, "VmRSS")?;
    eprintln!("{n} TLS sessions: levee RSS {base} -> {open} KiB");
    rt.block_on(async move { drop(sessions) });
    Ok(Rss {
        base,
        held: open,
        n,
    })
}

/// levee stopped and started again on the same config, ports and journal.
fn restart(site: &mut Site) {
    site.levee.stop();
    site.levee.restart();
}

/// Waits until levee says `n` sessions hibernate.
fn until_hibernating(http: &mut HttpClient, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = http
            .metric("levee_imap_sessions_hibernating")?
            .unwrap_or(0.0);
        if now >= n as f64 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {now} of {n} sessions hibernate after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The failover epoch levee reports.
fn epoch(http: &mut HttpClient) -> Result<f64> {
    http.metric("levee_epoch")?
        .context("levee reports no levee_epoch")
}

fn round(a: &Args, rt: &Runtime, round: usize) -> Result<Many> {
    let n = a.sessions;
    let users = n.div_ceil(SESSIONS_PER_USER);
    let (mut primary, replica) = site_pair(&format!("imap-many{round}"), users)?;
    let accounts: Vec<(String, String)> = primary
        .stack
        .users()
        .iter()
        .filter(|(user, _)| user.starts_with("user"))
        .cloned()
        .collect();
    let names: Vec<String> = accounts.iter().map(|(user, _)| user.clone()).collect();
    let direct_open = open_direct(rt, replica.stack.imap_addr(), &accounts, n)?;
    eprintln!(
        "round {round}: {n} sessions straight at the replica's Dovecot, all at once: {:.1} s",
        direct_open.as_secs_f64()
    );
    primary
        .levee
        .reconfigure(|text| levee_config_edited(text, n, a.hibernate_after.as_deref()));
    let tls = tls_memory(a, rt, &primary, &accounts)?;
    restart(&mut primary);
    let smtp = match a.smtp_sessions {
        0 => None,
        m => {
            let held = smtp_held::measure(&primary, m)?;
            restart(&mut primary);
            Some(held)
        }
    };
    let pid = primary.levee.pid().context("levee runs as a child")?;
    let mut http = HttpClient::new(primary.levee.ports.metrics);
    let epoch_before = epoch(&mut http)?;
    std::thread::sleep(SETTLE);
    let base_kib = proc_kib(pid, "VmRSS")?;

    let started = Instant::now();
    let plain = rt.block_on(imap_load::open_idle(
        primary.levee.ports.imap,
        &Security::Plain,
        &accounts,
        n,
        a.parallel,
    ))?;
    let open = started.elapsed();
    if a.hibernate_after.is_some() {
        until_hibernating(&mut http, n)?;
    }
    std::thread::sleep(SETTLE);
    let plain_kib = proc_kib(pid, "VmRSS")?;
    let epoch_now = epoch(&mut http)?;
    ensure!(
        epoch_now == epoch_before,
        "levee failed over while the sessions were opened (epoch {epoch_before} -> {epoch_now})"
    );
    eprintln!(
        "round {round}: {n} plain sessions open in {:.1} s, levee RSS {base_kib} -> {plain_kib} KiB",
        open.as_secs_f64()
    );

    let (tx, mut events) = mpsc::unbounded_channel();
    let mut want = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for (i, session) in plain.into_iter().enumerate() {
        want.push(session.exists + 1);
        readers.push(rt.spawn(watch(i, session.client, tx.clone())));
    }
    let ticks = process_ticks(pid);
    let killed = kill_primary_dovecot(&mut primary.stack)?;
    let moves = follow_moves(&mut events, &mut http, killed, n)?;
    let cpu_ticks = process_ticks(pid) - ticks;
    let (count, moved_metric) = moves.metric;
    let (told_why, closed_why) = (reasons(&moves.told), reasons(&moves.closed));
    eprintln!(
        "round {round}: {} sessions moved, {} closed ({}), {} told BYE/NO/BAD on the way ({}), \
         {} of them moved: metric {count} after {:.0} ms",
        moves.moved.len(),
        moves.closed.len(),
        closed_why.as_deref().unwrap_or("-"),
        moves.told.len(),
        told_why.as_deref().unwrap_or("-"),
        moves.told_then_moved(),
        millis(moved_metric),
    );
    ensure!(
        count == moves.moved.len() as f64,
        "levee_imap_migrations_total is {count}, but {} clients saw their session move",
        moves.moved.len(),
    );
    let [first_client, median_client, last_client] = moves.client_times(killed);
    let moved_kib = proc_kib(pid, "VmRSS")?;

    let alive: HashSet<usize> = moves.moved.keys().copied().collect();
    let sent = Instant::now();
    deliver(&primary, &names, &format!("imap-many{round}-after"))?;
    let seen = until_each(rt, &mut events, &alive, "saw the new message", |i, r| {
        imap_load::exists(r).is_some_and(|count| count >= want[i])
    })?;
    let new_mail = seen.iter().max().map_or(Duration::ZERO, |t| *t - sent);

    let open_now = sessions_active(&mut http, "imap")?;
    ensure!(
        open_now == alive.len() as f64,
        "levee counts {open_now} IMAP sessions, not {}",
        alive.len()
    );
    let peak_kib = proc_kib(pid, "VmHWM")?;
    rt.block_on(async move {
        for reader in readers {
            reader.abort();
        }
    });
    let tck: f64 = shell("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0);
    let per = |kib: u64| kib.saturating_sub(base_kib) as f64 / n as f64;
    Ok(Many {
        users,
        plain: Rss {
            base: base_kib,
            held: plain_kib,
            n,
        },
        tls,
        smtp,
        moved_kib: per(moved_kib),
        peak_kib,
        direct_open,
        open,
        closed: moves.closed.len(),
        closed_why,
        told: moves.told.len(),
        told_then_moved: moves.told_then_moved(),
        told_why,
        moved_metric,
        first_client,
        median_client,
        last_client,
        cpu_us: cpu_ticks as f64 * 1e6 / tck / n as f64,
        new_mail,
    })
}

pub(crate) fn run(a: &Args, rt: &Runtime) -> Result<Vec<Many>> {
    (1..=a.rounds).map(|r| round(a, rt, r)).collect()
}
