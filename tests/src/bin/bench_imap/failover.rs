//! Failover time as one client lives it, with levee's default `[failover]` settings: a
//! session with INBOX selected (implicit TLS), the primary's Dovecot killed, and a NOOP
//! sent on that connection right after; the figure is the time from the start of the kill
//! to the NOOP's OK. A fresh site pair per round, so that every round starts with the
//! primary active and no hold-down running.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use levee_tests::imap_load::{ImapClient, Security, show};
use tokio::runtime::Runtime;

use super::{Args, kill_primary_dovecot, millis, site_pair};

/// One round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failover {
    /// From the start of the kill to the first NOOP answered OK.
    pub to_ok: Duration,
    /// The kill itself: SIGKILL of Dovecot's process group until its IMAP port refuses.
    pub kill: Duration,
    /// NOOPs answered NO before that (levee answers NO only for commands it must not
    /// send twice, so this should stay 0).
    pub refused: u32,
}

pub(crate) fn run(a: &Args, rt: &Runtime) -> Result<Vec<Failover>> {
    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        let (mut primary, _replica) = site_pair(&format!("imap-fo{round}"), 0)?;
        let security = Security::tls(&primary.cert_path())?;
        let password = primary.password("alice");
        let imaps = primary.levee.ports.imaps;
        let mut client = rt.block_on(async {
            let mut client = ImapClient::connect(imaps, &security).await?;
            client.login("alice", &password).await?;
            client.select("INBOX").await?;
            client.ok("NOOP").await?;
            anyhow::Ok(client)
        })?;
        // Both sites have been checked healthy a few times over.
        std::thread::sleep(Duration::from_secs(2));
        let killed = kill_primary_dovecot(&mut primary.stack)?;
        let kill = killed.elapsed();
        let mut refused = 0;
        let to_ok = rt.block_on(async {
            loop {
                let reply = client
                    .command("NOOP")
                    .await
                    .context("NOOP after the kill")?;
                if let Some(bad) = reply.untagged.iter().find(|r| r.starts_with(b"* BYE")) {
                    bail!("the client saw {}", show(bad));
                }
                if reply.is_ok() {
                    return Ok(killed.elapsed());
                }
                refused += 1;
                ensure!(
                    killed.elapsed() < Duration::from_secs(30),
                    "no NOOP OK in 30 s"
                );
            }
        })?;
        let moved = primary.levee.metric("levee_imap_migrations_total");
        ensure!(
            moved == Some(1.0),
            "levee_imap_migrations_total is {moved:?} after one session moved"
        );
        eprintln!(
            "round {round}: NOOP OK {:.0} ms after the kill (the kill took {:.0} ms)",
            millis(to_ok),
            millis(kill)
        );
        rounds.push(Failover {
            to_ok,
            kill,
            refused,
        });
    }
    Ok(rounds)
}
