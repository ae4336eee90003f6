//! Legal holds and pruning from the command line: `levee journal hold` (a selection, with
//! a reason), `holds` (the list), `release`, and `prune` (what `[retention]` does in the
//! background, on demand). Holds and prunes are records in the primary's chain; a
//! replica's journal follows them and takes none of its own.

use std::process::ExitCode;

use levee_journal::{Journal, Seq};
use serde_json::json;

use super::select::{Selection, walk};
use super::{Source, actor, open, prepare, usage_error};

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub source: Source,
    #[command(flatten)]
    pub selection: Selection,
    /// Why (a matter or case number): kept in the hold's record.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub source: Source,
    /// The hold's id, as `hold` printed it and `holds` lists it.
    pub hold: Seq,
    /// Why it is lifted.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub source: Source,
    /// Prune what was accepted more than this many days ago.
    #[arg(long, conflicts_with = "before", required_unless_present = "before")]
    pub days: Option<u32>,
    /// Prune what was accepted before this time (`2026-11-22` or RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub before: Option<String>,
}

/// Refuses work that only the primary's journal may record.
fn primary_only(what: &str, journal: &Journal, json: bool) -> Result<(), ExitCode> {
    if matches!(journal.get_meta(super::ROLE_KEY), Ok(Some(role)) if role == b"replica") {
        return Err(usage_error(
            what,
            "this is a replica's journal: holds and pruning are made in the primary's, and the replica follows",
            json,
        ));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn hold(args: &HoldArgs) -> ExitCode {
    let json = args.source.json;
    let (filter, journal) = match prepare("hold", &args.source, &args.selection) {
        Ok(prepared) => prepared,
        Err(exit) => return exit,
    };
    if let Err(exit) = primary_only("hold", &journal, json) {
        return exit;
    }
    let mut seqs = Vec::new();
    if let Err(err) = walk(&journal, &filter, 0, |record| {
        seqs.push(record.seq);
        Ok(false)
    }) {
        return usage_error("hold", &format!("reading the journal: {err}"), json);
    }
    let placed = runtime().block_on(journal.hold(
        crate::smtp::now_ms(),
        actor(),
        &args.reason,
        format!("{filter:?}"),
        &seqs,
    ));
    match placed {
        Ok(id) if json => println!(
            "{}",
            json!({ "ok": true, "hold": id, "records": seqs.len(), "reason": args.reason.trim() })
        ),
        Ok(id) => println!("hold {id}: {} record(s) held", seqs.len()),
        Err(err) => return usage_error("hold", &err.to_string(), json),
    }
    ExitCode::SUCCESS
}

pub fn release(args: &ReleaseArgs) -> ExitCode {
    let json = args.source.json;
    let journal = match open(&args.source) {
        Ok(journal) => journal,
        Err(err) => return usage_error("release", &err, json),
    };
    if let Err(exit) = primary_only("release", &journal, json) {
        return exit;
    }
    let done = runtime().block_on(journal.release(
        crate::smtp::now_ms(),
        actor(),
        args.hold,
        &args.reason,
    ));
    match done {
        Ok(()) if json => println!("{}", json!({ "ok": true, "hold": args.hold })),
        Ok(()) => println!("hold {} released", args.hold),
        Err(err) => return usage_error("release", &err.to_string(), json),
    }
    ExitCode::SUCCESS
}

pub fn list(source: &Source) -> ExitCode {
    let journal = match open(source) {
        Ok(journal) => journal,
        Err(err) => return usage_error("holds", &err, source.json),
    };
    let holds = match journal.holds() {
        Ok(holds) => holds,
        Err(err) => return usage_error("holds", &err.to_string(), source.json),
    };
    if source.json {
        println!("{}", json!({ "ok": true, "holds": holds }));
        return ExitCode::SUCCESS;
    }
    for h in &holds {
        let state = if h.released { "released" } else { "active" };
        println!(
            "{:>8}  {state:<8}  {:>7} record(s)  by {}  {}",
            h.id, h.count, h.actor, h.reason
        );
    }
    println!("{} hold(s)", holds.len());
    ExitCode::SUCCESS
}

pub fn prune(args: &PruneArgs) -> ExitCode {
    let json = args.source.json;
    let before_ms = match (&args.before, args.days) {
        (Some(text), _) => match super::select::instant(text, false) {
            Ok(ms) => ms,
            Err(err) => return usage_error("prune", &err, json),
        },
        (None, Some(days)) => crate::smtp::now_ms().saturating_sub(u64::from(days) * 86_400_000),
        (None, None) => return usage_error("prune", "give --days or --before", json),
    };
    let journal = match open(&args.source) {
        Ok(journal) => journal,
        Err(err) => return usage_error("prune", &err, json),
    };
    if let Err(exit) = primary_only("prune", &journal, json) {
        return exit;
    }
    let through = crate::retention::prunable_through(&journal);
    let total = match runtime().block_on(crate::retention::prune_all(
        &journal,
        actor(),
        before_ms,
        through,
        |so_far| {
            if !json {
                eprintln!("levee journal prune: {so_far} record(s) pruned so far");
            }
        },
    )) {
        Ok(total) => total,
        Err(err) => return usage_error("prune", &err.to_string(), json),
    };
    if json {
        println!(
            "{}",
            json!({ "ok": true, "report": total, "through": through })
        );
    } else {
        println!(
            "{} record(s) pruned ({} bytes of messages); {} due but held",
            total.pruned, total.bytes, total.held
        );
    }
    ExitCode::SUCCESS
}
