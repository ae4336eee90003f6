//! Round trips of small commands on one logged-in INBOX: straight to Dovecot, through
//! levee without TLS, through levee with implicit TLS, and through a bare relay (bytes
//! copied both ways and nothing else: the least any proxy adds on this machine), in the
//! same run. The paths take turns command by command, so that drift of the machine spreads
//! evenly over them. The client runs on a single-threaded runtime.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use levee_tests::imap_load::{ImapClient, Security};
use levee_tests::{LeveeMode, Site, spec_with_users};
use tokio::net::{TcpListener, TcpStream};

use super::{Args, allow_plaintext, deliver, process_ticks};

/// The commands timed, as sent.
pub(crate) const COMMANDS: [&str; 2] = ["NOOP", "UID FETCH 1 (FLAGS)"];
/// The paths timed, in the order of odd rounds.
pub(crate) const PATHS: [&str; 4] = ["direct", "levee", "levee, implicit TLS", "bare relay"];
/// Untimed commands per path before the first round.
const WARM_UP: usize = 200;
/// Messages in the INBOX the commands run on.
const MESSAGES: usize = 10;

/// p50 and p99 of one path, command and round, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// `[command][path]` -> one entry per round.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    pub rounds: Vec<[[Percentiles; PATHS.len()]; COMMANDS.len()]>,
    /// levee's CPU time (utime + stime) per command it relayed, per round, in microseconds.
    pub cpu_us: Vec<f64>,
}

impl Latency {
    /// Every round's figure for `command` and `path`.
    pub(crate) fn series(
        &self,
        command: usize,
        path: usize,
        pick: fn(&Percentiles) -> f64,
    ) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|r| pick(&r[command][path]))
            .collect()
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted `v`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Times `n` runs of `command` on every client, interleaved: one command on each path in
/// turn (starting with a different path each time), so that whatever else the machine does
/// falls on all paths alike rather than on whichever ran during a burst.
async fn time(clients: &mut [ImapClient], command: &str, n: usize) -> Result<Vec<Percentiles>> {
    let mut us = vec![Vec::with_capacity(n); clients.len()];
    for i in 0..n {
        for k in 0..clients.len() {
            let p = (i + k) % clients.len();
            let sent = Instant::now();
            clients[p].ok(command).await?;
            us[p].push(sent.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(us
        .into_iter()
        .map(|mut us| {
            us.sort_by(f64::total_cmp);
            Percentiles {
                p50: percentile(&us, 50.0),
                p99: percentile(&us, 99.0),
            }
        })
        .collect())
}

/// A relay on a loopback port that copies bytes between each client and `upstream`, on a
/// thread and single-threaded runtime of its own, for as long as the bench runs.
fn bare_relay(upstream: SocketAddr) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the relay's runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("the relay's listener");
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
    });
    Ok(addr)
}

pub(crate) fn run(a: &Args) -> Result<Latency> {
    // One thread: a wake-up never crosses threads on the client's side of a round trip.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut site = Site::start_spec(spec_with_users("imap-rtt", 0), LeveeMode::Child, "");
    allow_plaintext(&mut site);
    let users = vec!["alice".to_string()];
    for i in 0..MESSAGES {
        deliver(&site, &users, &format!("rtt-{i}"))?;
    }
    let ids: Vec<String> = (0..MESSAGES)
        .map(|i| format!("rtt-{i}-alice@bench.example.org"))
        .collect();
    site.wait_for_messages("alice", &ids, 60);
    let password = site.password("alice");
    let tls = Security::tls(&site.cert_path())?;
    let targets = [
        (site.stack.imap_addr(), Security::Plain),
        (site.levee.ports.imap, Security::Plain),
        (site.levee.ports.imaps, tls),
        (bare_relay(site.stack.imap_addr())?, Security::Plain),
    ];
    rt.block_on(async {
        let mut clients = Vec::new();
        for (addr, security) in &targets {
            let mut client = ImapClient::connect(*addr, security)
                .await
                .with_context(|| format!("IMAP to {addr}"))?;
            client.login("alice", &password).await?;
            client.select("INBOX").await?;
            clients.push(client);
        }
        for command in COMMANDS {
            time(&mut clients, command, WARM_UP).await?;
        }
        let mut out = Latency::default();
        let pid = site.levee.pid().context("levee runs as a child")?;
        let tck: f64 = levee_tests::bench::shell("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100.0);
        for round in 0..a.rounds {
            let mut figures = [[Percentiles::default(); PATHS.len()]; COMMANDS.len()];
            let ticks = process_ticks(pid);
            for (c, command) in COMMANDS.iter().enumerate() {
                let timed = time(&mut clients, command, a.commands).await?;
                figures[c].copy_from_slice(&timed);
            }
            // Two of the paths go through levee.
            let relayed = (2 * COMMANDS.len() * a.commands) as f64;
            out.cpu_us
                .push((process_ticks(pid) - ticks) as f64 * 1e6 / tck / relayed);
            eprintln!(
                "round {}: NOOP p99 direct {:.0} us, levee {:.0} us, levee TLS {:.0} us, bare relay {:.0} us",
                round + 1,
                figures[0][0].p99,
                figures[0][1].p99,
                figures[0][2].p99,
                figures[0][3].p99
            );
            out.rounds.push(figures);
        }
        Ok(out)
    })
}
