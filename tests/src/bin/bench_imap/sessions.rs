//! Many idle sessions: what each costs levee in memory, and how long moving them all takes.
//!
//! Per round, a fresh site pair whose users `user01`, ... share the sessions out, ten
//! each (every session is logged in, has INBOX selected and is in IDLE):
//!
//! 0. A yardstick: as many sessions opened straight at the replica's Dovecot, all at once
//!    (what a migration asks of it), then closed.
//! 1. levee's RSS (`VmRSS` of the child) before and after opening the sessions with
//!    implicit TLS, which are then closed; levee is restarted (plaintext LOGIN allowed),
//!    and the same again without TLS.
//! 2. The primary's Dovecot killed: until every client has read the `EXISTS` levee passes
//!    on once its session is rebuilt at the replica (or was dropped: BYE or closed), and
//!    until `levee_imap_migrations_total` stopped at that count (polled every 10 ms);
//!    levee's RSS again.
//! 3. One message per user through levee's relay listener: until every moved session has
//!    seen an `EXISTS` that counts it. That path is the journal, replication to the
//!    replica, its applier's LMTP delivery and Dovecot's IDLE notification; a yardstick of
//!    the whole chain, not of levee's sessions.
//!
//! Sessions dropped in step 2 are counted and reported, not fatal; any other BYE, NO, BAD
//! or closed connection fails the bench.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use levee_tests::Site;
use levee_tests::bench::shell;
use levee_tests::imap_load::{self, ImapClient, Security, show};
use levee_tests::load::HttpClient;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::{
    Args, SESSIONS_PER_USER, allow_plaintext, deliver, kill_primary_dovecot, millis, proc_kib,
    process_ticks, site_pair,
};

/// Settling time before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for every session to move, or to see the new message.
const PATIENCE: Duration = Duration::from_secs(60);

/// One round.
#[derive(Debug, Clone, Default)]
pub(crate) struct Many {
    pub users: usize,
    /// levee's RSS with no client session, in KiB.
    pub base_kib: u64,
    /// RSS growth per plain session, in KiB.
    pub plain_kib: f64,
    /// RSS growth per TLS session (measured on a levee process of its own), in KiB.
    pub tls_kib: f64,
    /// RSS over the base per session once every plain session has moved, in KiB.
    pub moved_kib: f64,
    /// Peak RSS (`VmHWM`) of the round, in KiB.
    pub peak_kib: u64,
    /// Opening the sessions straight at the replica's Dovecot, all at once.
    pub direct_open: Duration,
    /// Opening the plain sessions through levee (connect, LOGIN, SELECT, IDLE).
    pub open: Duration,
    /// Sessions that got BYE or lost their connection instead of moving.
    pub dropped: usize,
    /// What the first of them saw.
    pub dropped_why: Option<String>,
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

/// What a session's reader saw.
#[derive(Debug)]
struct Event {
    session: usize,
    at: Instant,
    seen: Result<Vec<u8>, String>,
}

/// Reads a session's responses until it fails, reporting each.
async fn watch(session: usize, mut client: ImapClient, events: mpsc::UnboundedSender<Event>) {
    loop {
        let seen = client.response().await.map_err(|e| e.to_string());
        let failed = seen.is_err();
        let event = Event {
            session,
            at: Instant::now(),
            seen,
        };
        if events.send(event).is_err() || failed {
            return;
        }
    }
}

/// Feeds the events of sessions in `alive` to `take` until it returned true for each;
/// returns the time of the event that completed each.
fn until_each(
    rt: &Runtime,
    events: &mut mpsc::UnboundedReceiver<Event>,
    alive: &HashSet<usize>,
    what: &str,
    mut take: impl FnMut(usize, &[u8]) -> bool,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + PATIENCE;
    let mut done: HashMap<usize, Instant> = HashMap::new();
    while done.len() < alive.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) =
            rt.block_on(async { tokio::time::timeout(left, events.recv()).await })
        else {
            bail!(
                "{} of {} sessions {what} after {PATIENCE:?}",
                done.len(),
                alive.len()
            );
        };
        if !alive.contains(&event.session) {
            continue;
        }
        let response = match event.seen {
            Ok(response) => response,
            Err(err) => bail!("session {}: connection lost ({err})", event.session),
        };
        if imap_load::is_error(&response) {
            bail!("session {} saw {}", event.session, show(&response));
        }
        if !done.contains_key(&event.session) && take(event.session, &response) {
            done.insert(event.session, event.at);
        }
    }
    Ok(done.into_values().collect())
}

/// How the sessions fared after the kill.
#[derive(Debug, Default)]
struct Moves {
    /// When each moved session's client read its `EXISTS`.
    moved: HashMap<usize, Instant>,
    /// What each dropped session saw.
    dropped: HashMap<usize, String>,
    /// The migration counter's last value, and when it got there (from the kill).
    metric: (f64, Duration),
}

/// Watches events and the migration counter until every session has moved or was
/// dropped, and the counter agrees with the moves.
fn follow_moves(
    events: &mut mpsc::UnboundedReceiver<Event>,
    http: &mut HttpClient,
    killed: Instant,
    n: usize,
) -> Result<Moves> {
    let mut m = Moves::default();
    loop {
        while let Ok(event) = events.try_recv() {
            let s = event.session;
            if m.dropped.contains_key(&s) {
                continue;
            }
            match event.seen {
                Ok(r) if imap_load::is_error(&r) => {
                    m.moved.remove(&s);
                    m.dropped.insert(s, show(&r));
                }
                Err(err) => {
                    m.moved.remove(&s);
                    m.dropped.insert(s, err);
                }
                Ok(r) if imap_load::exists(&r).is_some() => {
                    m.moved.entry(s).or_insert(event.at);
                }
                Ok(_) => {}
            }
        }
        let count = http.metric("levee_imap_migrations_total")?.unwrap_or(0.0);
        if count != m.metric.0 {
            m.metric = (count, killed.elapsed());
        }
        if m.moved.len() + m.dropped.len() >= n && count >= m.moved.len() as f64 {
            return Ok(m);
        }
        ensure!(
            killed.elapsed() < PATIENCE,
            "after {PATIENCE:?}: {} sessions moved, {} dropped, of {n}; the metric says {count}",
            m.moved.len(),
            m.dropped.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `proto="imap"` sample of `levee_sessions_active`.
fn imap_sessions(http: &mut HttpClient) -> Result<f64> {
    let text = http.get("/metrics")?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("levee_sessions_active{") && l.contains("proto=\"imap\""))
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

/// levee's RSS growth per idle TLS session: `n` opened through the implicit-TLS listener,
/// then closed. levee is restarted afterwards, so that memory they freed does not make
/// the plain sessions look cheaper.
fn tls_memory(
    a: &Args,
    rt: &Runtime,
    primary: &Site,
    accounts: &[(String, String)],
) -> Result<f64> {
    let n = a.sessions;
    let pid = primary.levee.pid().context("levee runs as a child")?;
    std::thread::sleep(SETTLE);
    let base = proc_kib(pid, "VmRSS")?;
    let tls = Security::tls(&primary.cert_path())?;
    let imaps = primary.levee.ports.imaps;
    let sessions = rt.block_on(imap_load::open_idle(imaps, &tls, accounts, n, a.parallel))?;
    std::thread::sleep(SETTLE);
    let open = proc_kib(pid, "VmRSS")?;
    eprintln!("{n} TLS sessions: levee RSS {base} -> {open} KiB");
    rt.block_on(async move { drop(sessions) });
    Ok(open.saturating_sub(base) as f64 / n as f64)
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
    let tls_kib = tls_memory(a, rt, &primary, &accounts)?;
    allow_plaintext(&mut primary);
    let pid = primary.levee.pid().context("levee runs as a child")?;
    let mut http = HttpClient::new(primary.levee.ports.metrics);
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
    std::thread::sleep(SETTLE);
    let plain_kib = proc_kib(pid, "VmRSS")?;
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
    ensure!(
        count == moves.moved.len() as f64,
        "levee_imap_migrations_total is {count}, but {} clients saw their session move",
        moves.moved.len()
    );
    let mut times: Vec<Duration> = moves.moved.values().map(|t| *t - killed).collect();
    times.sort();
    let median_client = times.get(times.len() / 2).copied().unwrap_or_default();
    let first_client = moves
        .moved
        .values()
        .min()
        .map_or(Duration::ZERO, |t| *t - killed);
    let last_client = moves
        .moved
        .values()
        .max()
        .map_or(Duration::ZERO, |t| *t - killed);
    let moved_kib = proc_kib(pid, "VmRSS")?;
    let dropped_why = moves
        .dropped
        .iter()
        .min_by_key(|(s, _)| **s)
        .map(|(s, why)| format!("session {s}: {why}"));
    eprintln!(
        "round {round}: {} sessions moved, {} dropped{}: metric after {:.0} ms, last client after {:.0} ms",
        moves.moved.len(),
        moves.dropped.len(),
        dropped_why
            .as_ref()
            .map_or(String::new(), |w| format!(" ({w})")),
        millis(moved_metric),
        millis(last_client)
    );

    let alive: HashSet<usize> = moves.moved.keys().copied().collect();
    let sent = Instant::now();
    deliver(&primary, &names, &format!("imap-many{round}-after"))?;
    let seen = until_each(rt, &mut events, &alive, "saw the new message", |i, r| {
        imap_load::exists(r).is_some_and(|count| count >= want[i])
    })?;
    let new_mail = seen.iter().max().map_or(Duration::ZERO, |t| *t - sent);

    let open_now = imap_sessions(&mut http)?;
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
        base_kib,
        plain_kib: per(plain_kib),
        tls_kib,
        moved_kib: per(moved_kib),
        peak_kib,
        direct_open,
        open,
        dropped: moves.dropped.len(),
        dropped_why,
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
