//! A primary and its replica seen together: their `/status` and logs for failure messages,
//! and the wait until the replica has everything the primary journaled.

use crate::tally::{u64_at, wait_until};
use crate::{Levee, tail};

/// Both daemons' `/status` and log tails, for failure messages.
pub fn describe(primary: &Levee, replica: &Levee) -> String {
    let status = |levee: &Levee| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| levee.status().to_string()))
            .unwrap_or_else(|_| "(no /status)".into())
    };
    format!(
        "primary /status: {}\nreplica /status: {}\nprimary log tail:\n{}\nreplica log tail:\n{}",
        status(primary),
        status(replica),
        tail(&primary.log(), 15),
        tail(&replica.log(), 15)
    )
}

/// Waits until the replica holds and has applied everything the primary journaled, and the
/// primary has seen the replica's ack for it; returns that head.
pub fn wait_caught_up(primary: &Levee, replica: &Levee, secs: u64) -> u64 {
    wait_until(
        secs,
        "replica caught up with the primary",
        || {
            let p = primary.status();
            let r = replica.status();
            let head = u64_at(&p, "/journal_head");
            let done = head > 0
                && u64_at(&p, "/replication/acked_seq") == head
                && u64_at(&r, "/durable_seq") == head
                && u64_at(&r, "/applied_seq") == head;
            done.then_some(head)
        },
        || describe(primary, replica),
    )
}
