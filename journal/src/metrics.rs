//! Metric names of the journal, declared once so dashboards and code agree.
//!
//! Call [`describe`] once at start-up, after installing the recorder.

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Histogram: seconds from `append` call to durable acknowledgement.
pub const APPEND_SECONDS: &str = "levee_journal_append_seconds";
/// Counter: records appended (acknowledged).
pub const APPENDS_TOTAL: &str = "levee_journal_appends_total";
/// Counter: records appended verbatim from another journal (replication).
pub const REPLICATED_TOTAL: &str = "levee_journal_replicated_records_total";
/// Counter: raw body bytes appended (local and replicated).
pub const BYTES_TOTAL: &str = "levee_journal_bytes_total";
/// Counter: group-commit flush+fdatasync rounds.
pub const FLUSHES_TOTAL: &str = "levee_journal_flushes_total";
/// Gauge: highest durable seq.
pub const HEAD: &str = "levee_journal_head";
/// Gauge: 1 while the journal's filesystem is below its free-space reserve.
pub const LOW_SPACE: &str = "levee_journal_low_space";
/// Counter: new records refused because the filesystem was below the reserve.
pub const REFUSED_LOW_SPACE: &str = "levee_journal_refused_low_space_total";

/// Registers units and help texts with the installed recorder.
pub fn describe() {
    describe_histogram!(
        APPEND_SECONDS,
        Unit::Seconds,
        "Time from journal append to durable acknowledgement"
    );
    describe_counter!(APPENDS_TOTAL, "Records durably appended to the journal");
    describe_counter!(
        REPLICATED_TOTAL,
        "Records appended verbatim from another journal (replication)"
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Raw body bytes appended to the journal"
    );
    describe_gauge!(
        LOW_SPACE,
        "1 while the journal filesystem is below its free-space reserve (new mail refused)"
    );
    describe_counter!(
        REFUSED_LOW_SPACE,
        "New records refused because the journal filesystem was below its reserve"
    );
    describe_counter!(
        FLUSHES_TOTAL,
        "Journal group-commit flushes (flush + fdatasync)"
    );
    describe_gauge!(HEAD, "Highest durable journal sequence number");
}
