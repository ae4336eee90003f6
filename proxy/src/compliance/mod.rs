//! What compliance officers do with the journal: `levee journal search`, `export`,
//! `replay` and `verify`, on a journal directory opened directly (the daemon that owns it must
//! be stopped, or the directory be a copy). Each action is itself an audit record in the
//! journal it looked at, except in a replica's journal, which only ever holds what the
//! primary streamed to it.

pub mod export;
pub mod hold;
pub mod progress;
pub mod replay;
pub mod search;
pub mod select;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use levee_journal::{Journal, NewRecord};

/// Journal meta key naming what a journal is; the replica daemon sets it to `replica`.
pub const ROLE_KEY: &str = "journal_role";

/// Which journal a command works on.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// levee's configuration file: the journal under its `node.data_dir`.
    #[arg(short, long, value_name = "FILE", conflicts_with = "journal")]
    pub config: Option<PathBuf>,
    /// A journal directory (`<data_dir>/journal`), e.g. a copy taken for an audit.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// The key file of an encrypted journal (with --config, its `[journal] key_file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum JournalCommand {
    /// Find messages by time, sender, recipient, Message-ID, subject words, authenticated
    /// user or direction; indexed fields are looked up, not scanned.
    Search(Box<search::SearchArgs>),
    /// Write the selected messages, byte for byte, to `.eml` files or an mbox, with a
    /// manifest of hashes; an interrupted export continues where it stopped.
    Export(Box<export::ExportArgs>),
    /// Send the selected messages again, with their original envelope, to an SMTP or LMTP
    /// server, at a bounded rate; a report file makes it resumable.
    Replay(Box<replay::ReplayArgs>),
    /// Walk the hash chain and every body hash; exits 1 naming the first broken record.
    Verify {
        #[command(flatten)]
        source: Source,
    },
    /// Place a legal hold on the selected messages: never pruned until released.
    Hold(Box<hold::HoldArgs>),
    /// List the legal holds.
    Holds {
        #[command(flatten)]
        source: Source,
    },
    /// Lift a legal hold.
    Release(Box<hold::ReleaseArgs>),
    /// Prune delivered, replicated, unheld messages older than --days or --before now
    /// (what `[retention]` does in the background); the chain stays verifiable.
    Prune(Box<hold::PruneArgs>),
}

/// `levee journal ...`.
pub fn run(command: JournalCommand) -> ExitCode {
    match command {
        JournalCommand::Search(args) => search::run(&args),
        JournalCommand::Export(args) => export::run(&args),
        JournalCommand::Replay(args) => replay::run(&args),
        JournalCommand::Verify { source } => verify::run(&source),
        JournalCommand::Hold(args) => hold::hold(&args),
        JournalCommand::Holds { source } => hold::list(&source),
        JournalCommand::Release(args) => hold::release(&args),
        JournalCommand::Prune(args) => hold::prune(&args),
    }
}

/// A failure before any result: said on stderr (or as JSON), exit status 2.
pub fn usage_error(what: &str, message: &str, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "ok": false, "error": message }));
    } else {
        eprintln!("levee journal {what}: {message}");
    }
    ExitCode::from(2)
}

/// Opens the journal `source` names.
pub fn open(source: &Source) -> Result<Journal, String> {
    let (dir, key_file) = match (&source.journal, &source.config) {
        (Some(dir), _) => (dir.clone(), source.key_file.clone()),
        (None, Some(file)) => {
            let config = <levee_config::Config as levee_config::ConfigFile>::load(file)
                .map_err(|e| format!("{}: configuration rejected:\n{e}", file.display()))?;
            let key_file = source.key_file.clone().or(config.journal.key_file);
            (config.node.data_dir.join("journal"), key_file)
        }
        (None, None) => return Err("name the journal: --config FILE or --journal DIR".into()),
    };
    open_dir(&dir, key_file.as_deref())
}

fn open_dir(dir: &Path, key_file: Option<&Path>) -> Result<Journal, String> {
    if !dir.join("db").exists() && !dir.join("conf").exists() {
        return Err(format!("{} holds no journal", dir.display()));
    }
    let options = crate::journal_options(key_file).map_err(|e| e.to_string())?;
    Journal::open(dir, options).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("temporarily unavailable") {
            format!(
                "the journal in {} is open in a running levee: stop it, or work on a copy of the directory",
                dir.display()
            )
        } else {
            format!("{}: {text}", dir.display())
        }
    })
}

/// The filters parsed and the journal opened, or the exit status of a usage error.
pub fn prepare(
    what: &str,
    source: &Source,
    selection: &select::Selection,
) -> Result<(select::Filter, Journal), ExitCode> {
    let filter =
        select::Filter::parse(selection).map_err(|e| usage_error(what, &e, source.json))?;
    let journal = open(source).map_err(|e| usage_error(what, &e, source.json))?;
    Ok((filter, journal))
}

/// [`audit`] from a command's synchronous code.
pub fn audit_now(journal: &Journal, action: &str, detail: String) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(audit(journal, action, detail)),
        Err(err) => eprintln!(
            "levee journal: the audit record of this {action} could not be written: {err}"
        ),
    }
}

/// Who runs a journal command, as audit records name them.
pub fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Records `action` as an audit record in `journal` (not in a replica's); says on stderr
/// when it could not.
pub async fn audit(journal: &Journal, action: &str, detail: String) {
    if matches!(journal.get_meta(ROLE_KEY), Ok(Some(role)) if role == b"replica") {
        return;
    }
    let record = NewRecord::audit(crate::smtp::now_ms(), actor(), action, detail);
    if let Err(err) = journal.append(record).await {
        eprintln!("levee journal: the audit record of this {action} could not be written: {err}");
    }
}
