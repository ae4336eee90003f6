//! Metric names of the replication stream, declared once.

use metrics::{describe_counter, describe_gauge};

pub const SHIP_CONNECTED: &str = "levee_replication_connected";
pub const SHIP_ACKED: &str = "levee_replication_acked_seq";
pub const SHIP_APPLIED: &str = "levee_replication_applied_seq";
pub const SHIP_LAG_RECORDS: &str = "levee_replication_lag_records";
pub const SHIP_LAG_SECONDS: &str = "levee_replication_lag_seconds";
pub const SHIP_RECORDS: &str = "levee_replication_records_sent_total";
pub const SHIP_SESSION_ERRORS: &str = "levee_replication_session_errors_total";
pub const SYNC_DEGRADED: &str = "levee_replication_sync_degraded";
pub const SYNC_TIMEOUTS: &str = "levee_replication_sync_timeouts_total";
pub const RECV_RECORDS: &str = "levee_replica_records_received_total";
pub const RECV_REJECTED: &str = "levee_replica_batches_rejected_total";
pub const RECV_REFUSED: &str = "levee_replica_sessions_refused_total";
pub const RECV_SESSION_ERRORS: &str = "levee_replica_session_errors_total";
pub const RECV_HEAD: &str = "levee_replica_durable_seq";
pub const APPLIED_SEQ: &str = "levee_replica_applied_seq";
pub const APPLY_PARKED: &str = "levee_replica_parked_total";
pub const MAILBOX_CHANGES: &str = "levee_replica_mailbox_changes_total";

/// Describes every metric of this crate (call once, after installing a recorder).
pub fn describe() {
    describe_gauge!(SHIP_CONNECTED, "1 while the stream to the replica is up");
    describe_gauge!(SHIP_ACKED, "Highest seq the replica holds durably");
    describe_gauge!(
        SHIP_APPLIED,
        "Highest seq through which the replica's standby mail server holds every record"
    );
    describe_gauge!(
        SHIP_LAG_RECORDS,
        "Journal records not yet durable at the replica"
    );
    describe_gauge!(
        SHIP_LAG_SECONDS,
        "Age of the oldest record not yet durable at the replica"
    );
    describe_counter!(SHIP_RECORDS, "Records sent to the replica");
    describe_counter!(
        SHIP_SESSION_ERRORS,
        "Replication sessions that ended in an error"
    );
    describe_gauge!(
        SYNC_DEGRADED,
        "1 while sync replication has degraded to async"
    );
    describe_counter!(
        SYNC_TIMEOUTS,
        "250s sent without the replica's ack after sync_timeout"
    );
    describe_counter!(RECV_RECORDS, "Records written at the replica");
    describe_counter!(
        RECV_REJECTED,
        "Batches refused by the replica (hash chain or order)"
    );
    describe_counter!(
        RECV_REFUSED,
        "Primary sessions refused (auth, version, epoch)"
    );
    describe_counter!(
        RECV_SESSION_ERRORS,
        "Primary sessions that ended in an error (TLS, framing, I/O, rejected batch)"
    );
    describe_gauge!(RECV_HEAD, "Highest seq durable at the replica");
    describe_gauge!(
        APPLIED_SEQ,
        "Highest seq applied to the standby mail server"
    );
    describe_counter!(
        APPLY_PARKED,
        "Records whose delivery to the standby failed permanently"
    );
    describe_counter!(
        MAILBOX_CHANGES,
        "IMAP mailbox changes from the primary applied at the standby"
    );
}
