//! `levee journal verify`: every chain link and body hash from the first record, with
//! progress; exit status 0 when intact, 1 naming the first broken record, 2 when the
//! journal could not be read at all.

use std::process::ExitCode;
use std::time::Instant;

use super::progress::Progress;
use super::{Source, audit_now, open, usage_error};

pub fn run(source: &Source) -> ExitCode {
    let journal = match open(source) {
        Ok(journal) => journal,
        Err(err) => return usage_error("verify", &err, source.json),
    };
    let started = Instant::now();
    let mut progress = Progress::new("verify", journal.head());
    let report = journal.verify_with(|so_far| progress.at(so_far.records_checked));
    progress.finish();
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            return usage_error(
                "verify",
                &format!("reading the journal: {err}"),
                source.json,
            );
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let mb_per_s = report.bytes as f64 / 1e6 / seconds.max(1e-9);
    let detail = match &report.first_broken {
        None => format!(
            "intact: {} records through seq {} ({} pruned, crossed by their checkpoints)",
            report.records_checked, report.head, report.records_pruned
        ),
        Some((seq, why)) => format!("BROKEN at record {seq}: {why}"),
    };
    audit_now(&journal, "journal-verify", detail.clone());
    if source.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": report.is_intact(),
                "head": report.head,
                "records_checked": report.records_checked,
                "records_pruned": report.records_pruned,
                "bytes": report.bytes,
                "body_bytes": report.body_bytes,
                "seconds": seconds,
                "first_broken": report.first_broken.as_ref().map(|(seq, why)| {
                    serde_json::json!({ "seq": seq, "reason": why })
                }),
            })
        );
    } else {
        println!("{detail}");
        println!(
            "{} stored bytes ({} bytes of messages) in {seconds:.2} s, {mb_per_s:.0} MB/s",
            report.bytes, report.body_bytes
        );
    }
    if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
