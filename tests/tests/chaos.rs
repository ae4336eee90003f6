//! The chaos suite's short form (`chaos --seconds 90`): every fault of the cycle at least
//! once under load, then nothing acknowledged lost or doubled, both chains whole and the
//! journals identical. The long form is the same binary run for 30 minutes or more (see
//! the README).

use std::process::Command;

use serde_json::Value;

#[test]
fn short_chaos_run_loses_and_doubles_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--seconds", "90", "--every", "2", "--json"])
        .output()
        .expect("run the chaos binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("no JSON report ({err}); stderr:\n{stderr}"));
    assert!(out.status.success(), "{report:#}\n{stderr}");

    let acknowledged = report["acknowledged"].as_u64().unwrap();
    assert!(acknowledged >= 100, "too little load: {report:#}");
    for place in ["in_journal", "in_replica_mailbox", "in_active_mailbox"] {
        assert_eq!(report[place], acknowledged, "{place}: {report:#}");
    }
    assert_eq!(report["lost"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["duplicates"], serde_json::json!([]), "{report:#}");
    for check in [
        "primary_chain_intact",
        "replica_chain_intact",
        "journals_identical",
    ] {
        assert_eq!(report[check], true, "{check}: {report:#}");
    }
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 5, "every kind of fault: {report:#}");
    for fault in faults {
        assert!(fault["times"].as_u64().unwrap() >= 1, "{fault}");
    }
    let imap = &report["imap"];
    assert!(imap["commands_ok"].as_u64().unwrap() > 100, "{imap}");
    assert_eq!(imap["lost_otherwise"], 0, "{imap}");
    assert_eq!(imap["errors"], serde_json::json!([]), "{imap}");
}
