//! `levee journal replay`: re-injects a selection of journaled messages into any SMTP or
//! LMTP server with their original envelope and bytes, at a bounded rate. Each message's
//! outcome is appended to a report file as a JSON line as it happens; run again with the
//! same report, a replay skips what was delivered or refused for good and tries the rest.
//! The end says how many were delivered, refused (with the server's reply) and deferred.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use levee_journal::{Journal, Record, RecordKind, Seq};
use serde_json::{Value, json};

use super::select::{Filter, Selection, walk};
use super::{Source, audit, prepare, usage_error};
use crate::standby::link::{StandbyLink, Target, Verdict};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: Source,
    #[command(flatten)]
    pub selection: Selection,
    /// The server: `smtp://host:port` or `lmtp://host:port`.
    #[arg(long = "to", value_name = "URL")]
    pub target: String,
    /// At most this many messages a second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// The report, one JSON line per message; a replay run again with it continues.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The name levee gives itself in LHLO/EHLO.
    #[arg(long, default_value = "levee-replay.localdomain")]
    pub hostname: String,
}

/// Where to replay to, from `smtp://host:port` or `lmtp://host:port`.
pub fn parse_target(url: &str) -> Result<(Target, String), String> {
    let bad = || format!("invalid target {url:?}: use smtp://host:port or lmtp://host:port");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let addr: SocketAddr = rest
        .to_socket_addrs()
        .map_err(|e| format!("target {url}: {e}"))?
        .next()
        .ok_or_else(bad)?;
    let target = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => Target::Smtp(addr),
        "lmtp" => Target::Lmtp(addr),
        _ => return Err(bad()),
    };
    Ok((target, rest.replace([':', '/'], "_")))
}

/// Counts of one replay.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: u64,
    pub refused: u64,
    pub deferred: u64,
    /// Done by an earlier run with the same report.
    pub already: u64,
    /// `seq: rcpt: reply` for each refused recipient.
    pub refusals: Vec<String>,
}

/// Seqs the report already settles (delivered, or refused for good).
fn settled(report: &std::path::Path) -> BTreeSet<Seq> {
    let Ok(file) = std::fs::File::open(report) else {
        return BTreeSet::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|entry| matches!(entry["outcome"].as_str(), Some("delivered" | "refused")))
        .filter_map(|entry| entry["seq"].as_u64())
        .collect()
}

/// Replays every selected message the report does not settle yet.
pub async fn replay(
    journal: &Journal,
    filter: &Filter,
    link: &mut StandbyLink,
    report: &std::path::Path,
    rate: f64,
) -> Result<Tally, String> {
    let done = settled(report);
    let mut selected: Vec<Record> = Vec::new();
    walk(journal, filter, 0, |record| {
        selected.push(record);
        Ok(false)
    })?;
    let mut out = OpenOptions::new()
        .append(true)
        .create(true)
        .open(report)
        .map_err(|e| format!("{}: {e}", report.display()))?;
    let pause = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tally = Tally::default();
    let mut progress = super::progress::Progress::new("replay", selected.len() as u64);
    for (at, record) in selected.iter().enumerate() {
        progress.at(at as u64);
        if done.contains(&record.seq) {
            tally.already += 1;
            continue;
        }
        let RecordKind::Message(message) = &record.kind else {
            continue;
        };
        let rcpts: Vec<&str> = message.rcpt_to.iter().map(String::as_str).collect();
        let started = tokio::time::Instant::now();
        let verdicts = link
            .transfer(&message.mail_from, &rcpts, &message.body)
            .await
            .map_err(|e| format!("record {}: {e}", record.seq))?;
        let mut outcome = "delivered";
        let mut rcpt_lines = Vec::new();
        for (rcpt, verdict) in &verdicts {
            let (word, reply) = match verdict {
                Verdict::Delivered => ("delivered", None),
                Verdict::Refused(reply) => {
                    tally
                        .refusals
                        .push(format!("{}: {rcpt}: {reply}", record.seq));
                    ("refused", Some(reply.clone()))
                }
                Verdict::Deferred(reply) => ("deferred", Some(reply.clone())),
            };
            outcome = match (outcome, word) {
                (_, "deferred") | ("deferred", _) => "deferred",
                (_, "refused") | ("refused", _) => "refused",
                _ => "delivered",
            };
            rcpt_lines.push(json!({ "rcpt": rcpt, "verdict": word, "reply": reply }));
        }
        match outcome {
            "delivered" => tally.delivered += 1,
            "refused" => tally.refused += 1,
            _ => tally.deferred += 1,
        }
        let line = json!({
            "seq": record.seq,
            "message_id": message.message_id,
            "outcome": outcome,
            "rcpts": rcpt_lines,
        });
        writeln!(out, "{line}").map_err(|e| format!("{}: {e}", report.display()))?;
        tokio::time::sleep_until(started + pause).await;
    }
    progress.finish();
    link.close().await;
    Ok(tally)
}

pub fn run(args: &ReplayArgs) -> ExitCode {
    let json = args.source.json;
    let (target, name) = match parse_target(&args.target) {
        Ok(target) => target,
        Err(err) => return usage_error("replay", &err, json),
    };
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return usage_error("replay", "--rate must be above 0", json);
    }
    let (filter, journal) = match prepare("replay", &args.source, &args.selection) {
        Ok(prepared) => prepared,
        Err(exit) => return exit,
    };
    let report = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("levee-replay-{name}.jsonl")));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return usage_error("replay", "cannot start the runtime", json);
    };
    let mut link = StandbyLink::new(target, &args.hostname);
    let result = runtime.block_on(replay(&journal, &filter, &mut link, &report, args.rate));
    let detail = match &result {
        Ok(t) => format!(
            "{filter:?} to {}: {} delivered, {} refused, {} deferred, {} already done",
            args.target, t.delivered, t.refused, t.deferred, t.already
        ),
        Err(err) => format!("{filter:?} to {}: stopped: {err}", args.target),
    };
    runtime.block_on(audit(&journal, "journal-replay", detail));
    let tally = match result {
        Ok(tally) => tally,
        Err(err) => {
            let message = format!(
                "cannot replay to {}: {err}; what was done is in {} (run again to continue)",
                args.target,
                report.display()
            );
            if json {
                println!("{}", json!({ "ok": false, "error": message }));
            } else {
                eprintln!("levee journal replay: {message}");
            }
            return ExitCode::FAILURE;
        }
    };
    let complete = tally.refused == 0 && tally.deferred == 0;
    if json {
        println!(
            "{}",
            json!({
                "ok": complete, "delivered": tally.delivered, "refused": tally.refused,
                "deferred": tally.deferred, "already_done": tally.already,
                "refusals": tally.refusals, "report": report,
            })
        );
    } else {
        println!(
            "{} delivered, {} refused, {} deferred, {} already done (report: {})",
            tally.delivered,
            tally.refused,
            tally.deferred,
            tally.already,
            report.display()
        );
        for refusal in &tally.refusals {
            println!("refused: {refusal}");
        }
    }
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_smtp_or_lmtp_urls() {
        assert!(matches!(
            parse_target("smtp://127.0.0.1:2525"),
            Ok((Target::Smtp(_), name)) if name == "127.0.0.1_2525"
        ));
        assert!(matches!(
            parse_target("LMTP://127.0.0.1:24/"),
            Ok((Target::Lmtp(_), _))
        ));
        for bad in [
            "127.0.0.1:25",
            "http://127.0.0.1:25",
            "smtp://",
            "smtp://nohost",
        ] {
            let err = parse_target(bad).unwrap_err();
            assert!(err.contains("target"), "{bad}: {err}");
        }
    }
}
