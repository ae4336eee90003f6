//! The many-sessions tables: in the IMAP section of a full run, and as a section of their
//! own (`imap-scale`) with `--only sessions`.

use std::fmt::Write as _;
use std::time::Duration;

use levee_tests::bench::{markers, median, thousands};

use super::limits::{OpenFiles, files_needed, imap_connections, sessions_within};
use super::report::{each, header, kib_row, ms_row, verdict};
use super::sessions::{Many, Rss};
use super::{Args, SCALE_SECTION, SESSIONS_PER_USER};

const MEMORY_GOAL_KIB: f64 = 16.0;

/// How long moving every one of `n` sessions may take: 3 s for up to 1,000, 5 s for up to
/// 10,000.
fn migration_goal_ms(n: usize) -> Option<f64> {
    match n {
        0..=1000 => Some(3000.0),
        1001..=10_000 => Some(5000.0),
        _ => None,
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// A row of levee's whole RSS with the sessions open, and before.
fn total_row(o: &mut String, what: &str, rss: &[Rss]) {
    let held: Vec<f64> = rss.iter().map(|r| r.held as f64).collect();
    let base: Vec<f64> = rss.iter().map(|r| r.base as f64).collect();
    let _ = writeln!(
        o,
        "| {what} | {} (before: {}) | | {} |",
        mib(median(&held)),
        mib(median(&base)),
        each(&held, |k| format!("{:.1}", k / 1024.0))
    );
}

/// The SMTP rows, when SMTP sessions were held.
fn smtp_rows(o: &mut String, a: &Args, many: &[Many]) {
    let held: Vec<_> = many.iter().filter_map(|m| m.smtp).collect();
    if held.is_empty() {
        return;
    }
    let m = thousands(a.smtp_sessions as f64);
    let per: Vec<f64> = held.iter().map(|h| h.rss.per_session()).collect();
    kib_row(o, "levee RSS per held SMTP session (past EHLO)", &per, None);
    let rss: Vec<Rss> = held.iter().map(|h| h.rss).collect();
    total_row(
        o,
        &format!("levee RSS with the {m} SMTP sessions held"),
        &rss,
    );
    let open: Vec<Duration> = held.iter().map(|h| h.open).collect();
    ms_row(
        o,
        &format!("opening the {m} SMTP sessions through levee, 10 at once"),
        &open,
        None,
    );
    let _ = writeln!(
        o,
        "| levee's connections to Postfix while they were held | {} | | {} |",
        thousands(median(
            &held.iter().map(|h| h.upstream as f64).collect::<Vec<_>>()
        )),
        each(&held, |h| thousands(h.upstream as f64))
    );
}

/// The `### n idle sessions` subsection: how, the table, and the notes under it.
pub(crate) fn table(o: &mut String, a: &Args, many: &[Many]) {
    let users = many.first().map_or(0, |m| m.users);
    let n = a.sessions;
    let smtp = match a.smtp_sessions {
        0 => String::new(),
        m => format!(
            " Between the two, on a levee restarted for them (and restarted again after), {} \
             SMTP sessions are opened through its relay listener, 10 at once, each past its \
             greeting and EHLO and then silent (levee opens a session to the upstream Postfix \
             while it greets a client, and keeps it); levee's RSS before and after, 2 s after \
             the last EHLO, and its `levee_sessions_active{{proto=\"smtp\"}}` must count \
             every one.",
            thousands(m as f64)
        ),
    };
    let hibernating = match &a.hibernate_after {
        Some(after) => format!(
            " **Hibernating sessions** (`--hibernate-after {after}`, levee's `[imap] \
             hibernate_after`): after {after} in IDLE a session's connection to Dovecot is \
             closed and levee serves its IDLE from the mailbox it follows; levee's RSS is read \
             once `levee_imap_sessions_hibernating` counts every session, and on the kill a \
             session moves by following its mailbox at the replica (no login there until its \
             client sends a command): the `EXISTS` its client reads is the count there."
        ),
        None => String::new(),
    };
    let _ = write!(
        o,
        "### {} idle sessions: memory and migration\n\n\
         A fresh site pair per round; {users} users, {SESSIONS_PER_USER} sessions each, every \
         session logged in, INBOX selected, in IDLE, {} logging in at once; \
         levee's `[imap]` timeouts at their defaults (a session's rebuild at the replica \
         must finish within `connect_timeout`, 10 s), `max_connections = {}` and no limit per \
         client address (every client is 127.0.0.1); `[smtp]` likewise without a limit per \
         address, `command_timeout` at its default (5 min). First, as a yardstick of what a \
         migration asks of the replica, as many sessions opened straight at its Dovecot all \
         at once, then closed. Both sites' Dovecots let one imap process serve up to 50 \
         sessions (`service imap {{ service_count = 0, client_limit = 50 }}`; every user has \
         the same uid here): with Dovecot's default of a process per session, the yardstick \
         took 3.5 to 4.8 s on this machine for 1,000 sessions and the migration 4.4 to 5.3 s \
         (earlier runs of this bench), both bound by Dovecot starting a process per login, \
         which forking them ahead of time (`process_min_avail`) did not change. levee's RSS \
         (`VmRSS` of the child, read 2 s after the last session opened) before and after \
         opening the sessions with implicit TLS, which are then closed; levee is restarted \
         (so that memory they freed does not flatter the next figure) and the same is \
         measured without TLS; levee's failover epoch must not have moved meanwhile.{smtp} \
         Then the primary's Dovecot is killed: \
         the figures run from the start of the kill to each client reading the `* n EXISTS` \
         levee passes on once its session is rebuilt at the replica, and to \
         `levee_imap_migrations_total` reaching that count (polled every 10 ms); levee \
         rebuilds {} sessions at a time. Then one \
         message per user through levee's relay listener, until every session has seen an \
         `EXISTS` counting it: that path is the journal, replication, the replica's LMTP \
         delivery and Dovecot's IDLE notification (Dovecot checks every second past the 128 \
         inotify instances Linux gives a uid), not levee's sessions alone. Sessions whose \
         connection closes during the move, and sessions told BYE, NO or BAD on the way, are \
         counted (a session told BYE that then reads its EXISTS counts as moved, and as told); \
         a BYE, NO, BAD or closed connection afterwards fails the bench.{hibernating}\n\n\
         | figure | median | goal | rounds |\n| --- | --- | --- | --- |\n",
        thousands(n as f64),
        a.parallel,
        imap_connections(n),
        levee_proxy::imap::REBUILDS_AT_ONCE,
    );
    let pick = |f: fn(&Many) -> f64| many.iter().map(f).collect::<Vec<f64>>();
    let durations = |f: fn(&Many) -> Duration| many.iter().map(f).collect::<Vec<Duration>>();
    let rss = |f: fn(&Many) -> Rss| many.iter().map(f).collect::<Vec<Rss>>();
    kib_row(
        o,
        "levee RSS per idle session, plain",
        &pick(|m| m.plain.per_session()),
        Some(MEMORY_GOAL_KIB),
    );
    kib_row(
        o,
        "levee RSS per idle session, implicit TLS",
        &pick(|m| m.tls.per_session()),
        None,
    );
    let count = thousands(n as f64);
    total_row(
        o,
        &format!("levee RSS with the {count} sessions open, plain"),
        &rss(|m| m.plain),
    );
    total_row(
        o,
        &format!("levee RSS with the {count} sessions open, implicit TLS"),
        &rss(|m| m.tls),
    );
    kib_row(
        o,
        "levee RSS over the base per session, after the move",
        &pick(|m| m.moved_kib),
        None,
    );
    smtp_rows(o, a, many);
    let closed = pick(|m| m.closed as f64);
    let _ = writeln!(
        o,
        "| sessions whose connection closed instead of moving | {} of {count} | 0: {} | {} |",
        thousands(median(&closed)),
        verdict(closed.iter().all(|d| *d == 0.0)),
        each(&closed, |d| thousands(*d))
    );
    let told = pick(|m| m.told as f64);
    let _ = writeln!(
        o,
        "| sessions told BYE, NO or BAD during the move (of them moved all the same) | {} of {count} | 0: {} | {} |",
        thousands(median(&told)),
        verdict(told.iter().all(|d| *d == 0.0)),
        each(many, |m| format!(
            "{} ({})",
            thousands(m.told as f64),
            thousands(m.told_then_moved as f64)
        ))
    );
    let goal = migration_goal_ms(n);
    ms_row(
        o,
        "kill -> `levee_imap_migrations_total` at its final count",
        &durations(|m| m.moved_metric),
        goal,
    );
    ms_row(
        o,
        "kill -> the last moved client read its EXISTS",
        &durations(|m| m.last_client),
        goal,
    );
    ms_row(
        o,
        "kill -> the first client read its EXISTS",
        &durations(|m| m.first_client),
        None,
    );
    ms_row(
        o,
        "kill -> half the clients read their EXISTS",
        &durations(|m| m.median_client),
        None,
    );
    ms_row(
        o,
        "new message per user -> seen in every moved session",
        &durations(|m| m.new_mail),
        None,
    );
    ms_row(
        o,
        &format!(
            "opening the {count} sessions through levee, {} at once",
            a.parallel
        ),
        &durations(|m| m.open),
        None,
    );
    ms_row(
        o,
        &format!(
            "yardstick: {count} sessions opened straight at the replica's Dovecot, all at once"
        ),
        &durations(|m| m.direct_open),
        None,
    );
    let cpu = pick(|m| m.cpu_us);
    let _ = writeln!(
        o,
        "| levee CPU (utime + stime) per session moved | {} us | | {} |",
        thousands(median(&cpu)),
        each(&cpu, |v| thousands(*v))
    );
    for (i, m) in many.iter().enumerate() {
        if let Some(why) = &m.told_why {
            let _ = writeln!(o, "\nRound {}, told during the move: {why}.", i + 1);
        }
        if let Some(why) = &m.closed_why {
            let _ = writeln!(o, "\nRound {}, connections closed: {why}.", i + 1);
        }
    }
    let _ = write!(
        o,
        "\nlevee's RSS with no client session: {} KiB; peak RSS (`VmHWM`) per round: {} KiB. \
         For comparison, measured earlier on this machine: nginx's mail proxy used about \
         9.5 KiB per idle IMAP session, HAProxy about 3.3 KiB.\n",
        each(many, |m| thousands(m.plain.base as f64)),
        each(many, |m| thousands(m.peak_kib as f64)),
    );
}

/// The `imap-scale` section: the many-sessions phase alone.
pub(crate) fn scale_report(
    a: &Args,
    many: &[Many],
    files: OpenFiles,
    took: (String, Duration),
) -> String {
    let mut o = String::new();
    let mut title = format!(
        "IMAP at scale: {} idle sessions through one levee",
        thousands(a.sessions as f64)
    );
    if a.smtp_sessions > 0 {
        let _ = write!(
            title,
            ", and {} SMTP sessions",
            thousands(a.smtp_sessions as f64)
        );
    }
    let inotify = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .map_or_else(|_| "?".into(), |v| v.trim().to_string());
    let clients = format!(
        "this bench's own Rust IMAP client (`levee_tests::imap_load`, tokio, two worker \
         threads) and its blocking SMTP client (`levee_tests::load::SmtpSession`). Only the \
         many-sessions phase of `bench-imap` ran (`--only sessions`); the round trips and the \
         failover time of one session are in the section above. `fs.inotify.max_user_instances` \
         {inotify}, as found"
    );
    let more = format!(
        "- Open files: levee holds two sockets per IMAP session (the client's and Dovecot's; \
         one once the session hibernates) and one per user (the mailbox it follows), so {} \
         sessions need about {} open files with room to spare; at the hard limit of {}, at \
         most {} sessions that do not hibernate fit through one levee.\n",
        thousands(a.sessions as f64),
        thousands(files_needed(a.sessions, a.smtp_sessions, a.hibernate_after.is_some()) as f64),
        files.now.1,
        thousands(sessions_within(files.now.1) as f64),
    );
    header(
        &mut o,
        (SCALE_SECTION, &title),
        (&clients, &more),
        files,
        &took,
    );
    table(&mut o, a, many);
    let _ = write!(o, "\n{}\n", markers(SCALE_SECTION).1);
    o
}
