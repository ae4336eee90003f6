//! Which journaled messages a compliance command works on: the filters every command
//! shares (time range, sender, recipient, Message-ID, subject words, authenticated user,
//! direction), and the walk over the journal that applies them. Message-ID, sender,
//! recipient and day are looked up in the journal's index trees; subject words, the
//! authenticated user and the direction are checked on the candidates (or on every message
//! when no indexed filter narrows them).

use std::collections::BTreeSet;

use levee_journal::{Journal, MessageRecord, Record, RecordKind, Seq};
use time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};

/// Longest day range looked up day by day in the index; longer ones are scanned.
const MAX_INDEXED_DAYS: i64 = 366;

/// Which journaled messages a command works on: those matching every filter given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Accepted at or after: `2026-11-22` (UTC midnight) or RFC 3339 `2026-11-22T10:00:00Z`.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Accepted before the end of this day, or before this instant.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Envelope sender (MAIL FROM), case-insensitive.
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// An envelope recipient (RCPT TO), case-insensitive.
    #[arg(long = "rcpt", value_name = "ADDRESS")]
    pub to: Option<String>,
    /// The Message-ID, with or without angle brackets.
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    /// Words that must all be in the subject (case-insensitive).
    #[arg(long, value_name = "WORDS")]
    pub subject: Option<String>,
    /// The SMTP AUTH user who submitted it.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// `inbound` (arrived without authentication) or `outbound` (submitted by a user).
    #[arg(long, value_parser = ["inbound", "outbound"])]
    pub direction: Option<String>,
}

/// The filters, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message_id: Option<String>,
    pub subject_words: Vec<String>,
    pub user: Option<String>,
    pub outbound: Option<bool>,
}

impl Filter {
    pub fn parse(args: &Selection) -> Result<Filter, String> {
        let since_ms = args
            .since
            .as_deref()
            .map(|t| instant(t, false))
            .transpose()?;
        let until_ms = args
            .until
            .as_deref()
            .map(|t| instant(t, true))
            .transpose()?;
        if let (Some(since), Some(until)) = (since_ms, until_ms)
            && since >= until
        {
            return Err("--since must come before --until".into());
        }
        let id = args.message_id.as_deref().map(|id| bare_id(id).to_string());
        Ok(Filter {
            since_ms,
            until_ms,
            from: args.from.as_deref().map(str::to_ascii_lowercase),
            to: args.to.as_deref().map(str::to_ascii_lowercase),
            message_id: id,
            subject_words: (args.subject.as_deref().unwrap_or(""))
                .split_whitespace()
                .map(str::to_lowercase)
                .collect(),
            user: args.user.clone(),
            outbound: args.direction.as_deref().map(|d| d == "outbound"),
        })
    }

    /// Whether message `record` matches every filter.
    pub fn matches(&self, record: &Record, message: &MessageRecord) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        self.since_ms.is_none_or(|t| record.time_ms >= t)
            && self.until_ms.is_none_or(|t| record.time_ms < t)
            && (self.from.as_ref()).is_none_or(|f| lower(&message.mail_from) == *f)
            && (self.to.as_ref()).is_none_or(|t| message.rcpt_to.iter().any(|r| lower(r) == *t))
            && (self.message_id.as_ref())
                .is_none_or(|id| message.message_id.as_deref().map(bare_id) == Some(id.as_str()))
            && (self.user.as_ref())
                .is_none_or(|u| message.client.authenticated_user.as_ref() == Some(u))
            && self
                .outbound
                .is_none_or(|out| message.client.authenticated_user.is_some() == out)
            && (self.subject_words.is_empty() || {
                let subject = subject_of(&message.body).to_lowercase();
                self.subject_words
                    .iter()
                    .all(|w| subject.contains(w.as_str()))
            })
    }
}

/// A Message-ID without spaces and angle brackets.
fn bare_id(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix('<')
        .and_then(|id| id.strip_suffix('>'))
        .unwrap_or(id)
}

/// A time filter: an RFC 3339 instant, or a day (its start, or with `end` its end).
pub fn instant(text: &str, end: bool) -> Result<u64, String> {
    let invalid = || format!("invalid date {text:?}: use 2026-11-22 or 2026-11-22T10:00:00Z");
    let t = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let day = Date::parse(text, &format).map_err(|_| invalid())?;
            let day = if end {
                day.next_day().ok_or_else(invalid)?
            } else {
                day
            };
            day.midnight().assume_utc()
        }
    };
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| invalid())
}

pub fn subject_of(body: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse_headers(body)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}

/// Calls `take` with each matching message after seq `after`, oldest first, until it
/// returns `true` (enough) or the journal ends.
pub fn walk(
    journal: &Journal,
    filter: &Filter,
    after: Seq,
    mut take: impl FnMut(Record) -> Result<bool, String>,
) -> Result<(), String> {
    let mut offer = |record: Record| -> Result<bool, String> {
        match &record.kind {
            RecordKind::Message(message) if filter.matches(&record, message) => take(record),
            _ => Ok(false),
        }
    };
    match candidates(journal, filter).map_err(|e| e.to_string())? {
        Some(seqs) => {
            for seq in seqs.range(after + 1..) {
                if let Some(record) = journal.get(*seq).map_err(|e| e.to_string())?
                    && offer(record)?
                {
                    return Ok(());
                }
            }
        }
        None => {
            // Every message is a candidate: decoded on all cores, offered in order.
            let mut failed = None;
            journal
                .scan_from(after + 1, |record| match offer(record) {
                    Ok(enough) => !enough,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                })
                .map_err(|e| e.to_string())?;
            if let Some(err) = failed {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The seqs the indexes allow, or `None` when no indexed filter is given (then every
/// message is a candidate).
pub fn candidates(
    journal: &Journal,
    filter: &Filter,
) -> Result<Option<BTreeSet<Seq>>, levee_journal::JournalError> {
    let mut sets: Vec<Vec<Seq>> = Vec::new();
    if let Some(id) = &filter.message_id {
        sets.push(journal.by_message_id(id)?);
    }
    if let Some(from) = &filter.from {
        sets.push(journal.by_sender(from)?);
    }
    if let Some(to) = &filter.to {
        sets.push(journal.by_recipient(to)?);
    }
    if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
        let day =
            |ms: u64| OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).map(|t| t.date());
        if let (Ok(first), Ok(last)) = (day(since), day(until.saturating_sub(1)))
            && (last - first).whole_days() <= MAX_INDEXED_DAYS
        {
            let mut seqs = Vec::new();
            let mut at = first;
            while at <= last {
                seqs.extend(journal.by_day(at)?);
                match at.next_day() {
                    Some(next) => at = next,
                    None => break,
                }
            }
            sets.push(seqs);
        }
    }
    let mut sets = sets
        .into_iter()
        .map(|s| s.into_iter().collect::<BTreeSet<Seq>>());
    let Some(first) = sets.next() else {
        return Ok(None);
    };
    Ok(Some(sets.fold(first, |acc, s| {
        acc.intersection(&s).copied().collect()
    })))
}
