//! The faults, one at a time, each undone before the next: `kill -9` of levee (restarted
//! at once), of the replica daemon (restarted after a moment), of the primary site's
//! Dovecot and Postfix together (levee fails over to the replica; once they are back, an
//! admin fails back over the API), and a cut or a stall of the replication link.

use std::time::{Duration, Instant};

use levee_tests::admin::Api;
use levee_tests::tally::wait_until;
use levee_tests::{ReplicaSite, Site};

use crate::link::Link;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    LeveeKill,
    ReplicaKill,
    LinkCut,
    LinkStall,
    PrimaryMailKill,
}

impl Fault {
    /// The order faults come in, round after round.
    pub const CYCLE: [Fault; 5] = [
        Fault::LeveeKill,
        Fault::LinkCut,
        Fault::PrimaryMailKill,
        Fault::ReplicaKill,
        Fault::LinkStall,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::LeveeKill => "kill -9 of levee run, restarted at once",
            Fault::ReplicaKill => "kill -9 of levee replica, restarted after 1 s",
            Fault::LinkCut => "replication link cut, refused for 2 s",
            Fault::LinkStall => "replication link stalled for 3 s",
            Fault::PrimaryMailKill => {
                "kill -9 of the primary's Dovecot and Postfix: failover, restart, failback"
            }
        }
    }
}

/// One fault: when it began and when it was undone.
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: Fault,
    pub started: Instant,
    pub ended: Instant,
}

/// Everything the faults act on.
pub struct Chaos<'a> {
    pub primary: &'a mut Site,
    pub replica: &'a mut ReplicaSite,
    pub link: &'a Link,
    pub rt: &'a tokio::runtime::Runtime,
    pub api: &'a Api,
}

impl Chaos<'_> {
    /// Applies `fault` and undoes it; returns when the system is whole again.
    pub fn inject(&mut self, fault: Fault) -> Window {
        let started = Instant::now();
        match fault {
            Fault::LeveeKill => {
                self.primary.levee.kill();
                self.primary.levee.restart();
            }
            Fault::ReplicaKill => {
                self.replica.daemon.kill();
                std::thread::sleep(Duration::from_secs(1));
                self.replica.daemon.restart();
            }
            Fault::LinkCut => self.rt.block_on(self.link.cut(Duration::from_secs(2))),
            Fault::LinkStall => self.rt.block_on(self.link.stall(Duration::from_secs(3))),
            Fault::PrimaryMailKill => self.primary_mail_outage(),
        }
        Window {
            fault,
            started,
            ended: Instant::now(),
        }
    }

    fn primary_mail_outage(&mut self) {
        let stack = &mut self.primary.stack;
        stack
            .kill_dovecot()
            .expect("kill -9 of the primary's Dovecot");
        stack
            .stop_postfix()
            .expect("kill -9 of the primary's Postfix");
        let api = self.api;
        wait_until(
            15,
            "levee fails over to the replica",
            || (api.active_backend() == "replica").then_some(()),
            || levee_tests::tail(&self.primary.levee.log(), 20),
        );
        // Mail keeps coming to the replica for a while.
        std::thread::sleep(Duration::from_secs(1));
        let stack = &mut self.primary.stack;
        stack
            .start_dovecot()
            .expect("restart the primary's Dovecot");
        stack
            .start_postfix()
            .expect("restart the primary's Postfix");
        api.fail_back(180);
    }
}
