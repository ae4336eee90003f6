//! `levee journal search`: the messages levee journaled that match every filter given
//! ([`Selection`]), oldest first, a page at a time.

use std::process::ExitCode;

use levee_journal::{Journal, Record, RecordKind, Seq};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::select::{Filter, Selection, subject_of, walk};
use super::{Source, audit_now, prepare, usage_error};

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub source: Source,
    #[command(flatten)]
    pub selection: Selection,
    /// Results per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Only records after this seq (the previous page's `next_after`).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: Seq,
}

/// One page of matches after seq `after`, and the seq to continue after when there are
/// more.
pub fn search(
    journal: &Journal,
    filter: &Filter,
    after: Seq,
    limit: usize,
) -> Result<(Vec<Record>, Option<Seq>), String> {
    let mut hits = Vec::new();
    walk(journal, filter, after, |record| {
        hits.push(record);
        Ok(hits.len() > limit)
    })?;
    let more = hits.len() > limit;
    hits.truncate(limit);
    let next_after = if more {
        hits.last().map(|r| r.seq)
    } else {
        None
    };
    Ok((hits, next_after))
}

/// A match as printed with `--json`.
pub fn hit_json(record: &Record) -> Value {
    let RecordKind::Message(m) = &record.kind else {
        return Value::Null;
    };
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.time_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok());
    json!({
        "seq": record.seq,
        "time": time,
        "from": m.mail_from,
        "to": m.rcpt_to,
        "message_id": m.message_id,
        "subject": subject_of(&m.body),
        "size": m.body.len(),
        "user": m.client.authenticated_user,
        "listener": m.client.listener,
        "tls": m.client.tls,
        "sha256": hex::encode(record.body_sha256),
    })
}

pub fn run(args: &SearchArgs) -> ExitCode {
    let json = args.source.json;
    let (filter, journal) = match prepare("search", &args.source, &args.selection) {
        Ok(prepared) => prepared,
        Err(exit) => return exit,
    };
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let started = std::time::Instant::now();
    let found = search(&journal, &filter, args.after, limit);
    let query_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (hits, next_after) = match found {
        Ok(found) => found,
        Err(err) => return usage_error("search", &format!("reading the journal: {err}"), json),
    };
    audit_now(
        &journal,
        "journal-search",
        format!("{filter:?}, after {}: {} found", args.after, hits.len()),
    );
    if json {
        let results: Vec<Value> = hits.iter().map(hit_json).collect();
        println!(
            "{}",
            json!({ "ok": true, "results": results, "next_after": next_after, "query_ms": query_ms })
        );
    } else {
        print!("{}", table(&hits));
        match next_after {
            Some(seq) => println!("more: --after {seq}"),
            None => println!("{} found", hits.len()),
        }
    }
    ExitCode::SUCCESS
}

/// Matches as aligned columns: seq, time, sender, recipients, subject.
fn table(hits: &[Record]) -> String {
    let rows: Vec<[String; 5]> = hits
        .iter()
        .map(|record| {
            let h = hit_json(record);
            let text = |v: &Value| v.as_str().unwrap_or("").to_string();
            let to: Vec<String> = (h["to"].as_array().into_iter().flatten())
                .map(text)
                .collect();
            let mut subject = text(&h["subject"]);
            if subject.chars().count() > 50 {
                subject = subject.chars().take(49).chain(['…']).collect();
            }
            [
                h["seq"].to_string(),
                text(&h["time"]),
                text(&h["from"]),
                to.join(","),
                subject,
            ]
        })
        .collect();
    let head = ["SEQ", "TIME", "FROM", "TO", "SUBJECT"].map(String::from);
    let mut widths = head.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&head)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
