//! `chaos`: levee under steady SMTP and IMAP load while its parts are killed and its
//! replication link is cut, over and over; then the count of every acknowledged message.
//!
//! ```text
//! cargo run --release -p levee-tests --bin chaos -- [--seconds 60] [--every 3] [--json]
//! ```
//!
//! A primary site (real Postfix and Dovecot, `levee run` as a child process with fast
//! failover and the admin API) streams its journal through a relay the suite controls
//! ([`link`]) to a replica site (`levee replica` as a child, its own Postfix and Dovecot).
//! Senders ([`load`]) and IMAP sessions run throughout (the sessions hibernate in each
//! IDLE and wake for the command after it, with the default `--hibernate-after`); every
//! `--every` seconds the next
//! fault of [`faults::Fault::CYCLE`] is applied and undone. When the time is up the load
//! stops, levee fails back if it has to, both sites settle, and the suite checks that every
//! message whose sender saw 250 is once in the primary's journal, once in the replica's
//! mailbox and once in the active (primary) mailbox, that both hash chains verify and the
//! journals are identical. It prints the figures as a table (`--json`: as JSON) and exits
//! non-zero when anything was lost or doubled.
//!
//! Runs as root (the mail servers), with Postfix, Dovecot and python3 installed. levee
//! children are this binary again (its first argument `run` or `replica` makes it levee).

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use levee_proxy::admin::Role;
use levee_proxy::mailstack::MailStack;
use levee_tests::admin::{AdminSetup, FAST_FAILOVER};
use levee_tests::imap_load::Security;
use levee_tests::pair::wait_caught_up;
use levee_tests::tally::{exactly_once, inbox_counts, message_ids, wait_until};
use levee_tests::{LeveeMode, ReplicaLink, ReplicaSite, Site};

mod explain;
mod faults;
mod link;
mod load;
mod report;

use faults::{Chaos, Fault};
use levee_tests::admin::Api;
use load::{ImapLoad, SmtpLoad};
use report::{ImapFigures, Report};

/// levee under load while its parts die; then every acknowledged message is counted.
#[derive(Debug, clap::Parser)]
struct Args {
    /// How long the load runs and the faults come.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds of calm between two faults.
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// SMTP senders.
    #[arg(long, default_value_t = 3)]
    senders: u32,
    /// Milliseconds each sender waits between its messages.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// IMAP sessions (alice's INBOX, implicit TLS).
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// levee's `[imap] hibernate_after`: the IMAP sessions idle 700 ms a cycle, so with
    /// the default each hibernates and is woken again every cycle, faults or not.
    #[arg(long, default_value = "300ms")]
    hibernate_after: String,
    /// Leave these faults out of the cycle (e.g. `--without primary-mail-kill`).
    #[arg(long, value_delimiter = ',')]
    without: Vec<Fault>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to copy both sites' mail servers (logs, queues, Maildirs) and levee's logs
    /// when a message is lost or doubled, or an IMAP connection lost.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    if matches!(std::env::args().nth(1).as_deref(), Some("run" | "replica")) {
        return levee_proxy::cli::main();
    }
    let args = <Args as clap::Parser>::parse();
    let exe = std::env::current_exe().expect("the chaos binary's path");
    // levee's default level unless LEVEE_LOG asks for more.
    let filter = std::env::var("LEVEE_LOG").unwrap_or_else(|_| "info".into());
    levee_tests::levee::use_child_binary(exe, &filter);
    let report = run(&args);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report as JSON")
        );
    } else {
        println!("{}", report.table());
    }
    let failures = report.failures();
    if failures.is_empty() {
        eprintln!("chaos: passed");
        ExitCode::SUCCESS
    } else {
        eprintln!("chaos: FAILED: {}", failures.join("; "));
        ExitCode::FAILURE
    }
}

fn run(args: &Args) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let admin = AdminSetup::new(&[("chaos", Role::Operator)]);
    let mut replica = ReplicaSite::start("chaos-r", LeveeMode::Child);
    let link = rt
        .block_on(link::Link::start(replica.link.addr))
        .expect("the replication link relay");
    let through_link = ReplicaLink {
        addr: link.addr,
        ..replica.link.clone()
    };
    let extra = format!(
        "{}\n[upstream.replica]\nsmtp = \"{}\"\nimap = \"{}\"\n{FAST_FAILOVER}{}",
        through_link.primary_section("async", "2s"),
        replica.stack.smtp_addr(),
        replica.stack.imap_addr(),
        admin.section("drain_timeout = \"3s\"")
    );
    let mut primary = Site::start_with("chaos-p", LeveeMode::Child, &extra);
    let hibernate = format!("[imap]\nhibernate_after = \"{}\"\n", args.hibernate_after);
    primary
        .levee
        .reconfigure(|text| text.replacen("[imap]\n", &hibernate, 1));
    let api = Api {
        port: admin.port,
        ca: primary.cert_path(),
        token: admin.tokens[0].clone(),
    };
    wait_until(
        20,
        "the primary streams to the replica",
        || (primary.levee.status()["replication"]["connected"] == true).then_some(()),
        || levee_tests::tail(&primary.levee.log(), 20),
    );

    let started = Instant::now();
    let smtp = SmtpLoad::start(
        primary.levee.ports.relay.port(),
        "chaos",
        args.senders,
        args.seconds,
        Duration::from_millis(args.pause_ms),
    );
    let security = Security::tls(&primary.cert_path()).expect("TLS client config");
    let imap = ImapLoad::start(
        &rt,
        primary.levee.ports.imaps,
        security,
        "alice",
        &primary.password("alice"),
        args.sessions,
    );

    let mut windows = Vec::new();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut chaos = Chaos {
        primary: &mut primary,
        replica: &mut replica,
        link: &link,
        rt: &rt,
        api: &api,
    };
    let cycle: Vec<Fault> = (Fault::CYCLE.iter())
        .filter(|f| !args.without.contains(f))
        .copied()
        .collect();
    assert!(!cycle.is_empty(), "every fault left out");
    for fault in cycle.iter().cycle() {
        std::thread::sleep(Duration::from_secs(args.every));
        if Instant::now() >= deadline {
            break;
        }
        let window = chaos.inject(*fault);
        eprintln!(
            "chaos: {:>5.1} s  {} ({} ms), {} acknowledged so far",
            window.started.duration_since(started).as_secs_f64(),
            fault.describe(),
            window.ended.duration_since(window.started).as_millis(),
            smtp.acked()
        );
        windows.push(window);
    }
    let sent = smtp.finish();
    let imap = ImapFigures::from(imap.finish(&rt), &windows);
    eprintln!(
        "chaos: load over: {} acknowledged, {} not; settling",
        sent.acked.len(),
        sent.failed
    );
    for (why, times) in &sent.reasons {
        eprintln!("chaos:   {times} x {why}");
    }
    settle(&mut primary, &mut replica, &api, &sent.acked);
    count(args, &mut primary, &mut replica, sent, imap, &windows)
}

/// Back to the primary if a failover is still in force, the replica caught up, and every
/// acknowledged message in both mailboxes (or the time for it run out: the count says).
/// A copy too many cannot go away; only missing ones are waited for.
fn settle(primary: &mut Site, replica: &mut ReplicaSite, api: &Api, acked: &[String]) {
    if api.active_backend() != "primary" {
        api.fail_back(180);
    }
    wait_caught_up(&primary.levee, &replica.daemon, 180);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (at_primary, _) = exactly_once(acked, &inbox_counts(&primary.stack, "alice"));
        let (at_replica, _) = exactly_once(acked, &inbox_counts(&replica.stack, "alice"));
        if at_primary.is_empty() && at_replica.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Counts every acknowledged message in the mailboxes and (both daemons stopped) the
/// journals.
fn count(
    args: &Args,
    primary: &mut Site,
    replica: &mut ReplicaSite,
    sent: load::SmtpTally,
    imap: ImapFigures,
    windows: &[faults::Window],
) -> Report {
    let acked = &sent.acked;
    let mut lost = Vec::new();
    let mut duplicates = Vec::new();
    let mut doubled_by_mail_server = Vec::new();
    // `mta`: the site's Postfix stands between levee and the mailbox (at the replica the
    // applier speaks LMTP to Dovecot itself, so every copy there is levee's).
    let mut once = |counts: &HashMap<String, usize>, place: &str, mta: Option<&MailStack>| {
        let (missing, doubled) = exactly_once(acked, counts);
        lost.extend(missing.iter().map(|id| format!("{id} (not in {place})")));
        let mut by_levee = 0;
        for id in doubled {
            let id = id.split(' ').next().unwrap_or(id.as_str());
            if mta.is_some_and(|stack| explain::handed_over(stack, id) == 1) {
                doubled_by_mail_server.push(format!("{id} (in {place}, handed over once)"));
            } else {
                duplicates.push(format!("{id} (in {place})"));
                by_levee += 1;
            }
        }
        acked.len() - missing.len() - by_levee
    };
    let in_active_mailbox = once(
        &inbox_counts(&primary.stack, "alice"),
        "the active mailbox",
        Some(&primary.stack),
    );
    let in_replica_mailbox = once(
        &inbox_counts(&replica.stack, "alice"),
        "the replica mailbox",
        None,
    );

    let primary_log = primary.levee.log();
    primary.levee.stop();
    replica.daemon.stop();
    let source = primary.open_journal();
    let copy = replica.open_journal();
    let records = source.read_from(1, usize::MAX).expect("read the journal");
    let journaled = message_ids(&records);
    let mut journal_counts: HashMap<String, usize> = HashMap::new();
    for id in &journaled {
        *journal_counts.entry(id.clone()).or_insert(0) += 1;
    }
    let in_journal = once(&journal_counts, "the primary's journal", None);
    let acked_set: HashSet<&String> = acked.iter().collect();
    let journaled_unacknowledged = journaled
        .iter()
        .filter(|id| id.starts_with("chaos-") && !acked_set.contains(id))
        .count();
    for id in acked
        .iter()
        .filter(|id| journal_counts.get(*id) == Some(&1))
        .filter(|id| {
            lost.iter()
                .chain(&duplicates)
                .any(|l| l.starts_with(id.as_str()))
        })
        .take(5)
    {
        let seq = records
            .iter()
            .find(|r| message_ids(std::slice::from_ref(r)).first() == Some(id))
            .map_or(0, |r| r.seq);
        eprintln!("chaos: {id} is record {seq}");
        for (site, stack) in [("primary", &primary.stack), ("replica", &replica.stack)] {
            for copy in explain::copies(stack, "alice", id) {
                eprintln!("  copy at the {site}:\n    {copy}");
            }
            for line in explain::mail_log_lines(stack, id) {
                eprintln!("  {site} mail log: {line}");
            }
        }
        for line in explain::log_lines(&primary_log, seq) {
            eprintln!("  primary log: {line}");
        }
    }
    let theirs = copy
        .read_from(1, usize::MAX)
        .expect("read the replica journal");
    let journals_identical = copy.head() == source.head()
        && copy.last_chain() == source.last_chain()
        && theirs == records;

    let clean = lost.is_empty() && duplicates.is_empty() && imap.lost_otherwise == 0;
    if let (Some(keep), false) = (&args.keep, clean) {
        let sites = [
            ("primary", primary.stack.dir(), &primary.levee.log_path),
            ("replica", replica.stack.dir(), &replica.daemon.log_path),
        ];
        for (site, stack, log) in sites {
            let to = keep.join(site);
            let copied = std::fs::create_dir_all(&to).and_then(|()| {
                std::process::Command::new("cp")
                    .arg("-a")
                    .args([stack, log.as_path()])
                    .arg(&to)
                    .status()
            });
            eprintln!("chaos: {site} kept in {} ({copied:?})", to.display());
        }
    }
    Report {
        seconds: args.seconds,
        sent: acked.len() + sent.failed,
        acknowledged: acked.len(),
        not_acknowledged: sent.failed,
        in_journal,
        in_replica_mailbox,
        in_active_mailbox,
        lost,
        duplicates,
        doubled_by_mail_server,
        journaled_unacknowledged,
        journal_records: source.head(),
        primary_chain_intact: source.verify().expect("verify").is_intact(),
        replica_chain_intact: copy.verify().expect("verify").is_intact(),
        journals_identical,
        failovers: windows
            .iter()
            .filter(|w| w.fault == Fault::PrimaryMailKill)
            .count(),
        faults: Report::fault_figures(windows),
        imap,
    }
}
