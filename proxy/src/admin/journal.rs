//! The journal over the admin API, read only, for viewer tokens: a search with the filters
//! of `levee journal search`, one journaled message byte for byte, and a selection as an
//! mbox. Each call is an audit record naming the caller's token, the filter and what was
//! answered, refusals included.
//!
//! **An export is bounded before a byte is sent**: the selection is counted and measured
//! first, one past [`EXPORT_CAP`] is answered 413, and the rest is streamed through a small
//! pipe, never held whole in memory.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use levee_journal::{Journal, RecordKind, Seq};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{BytesCodec, FramedRead};

use super::api::{AdminState, ApiError, audit, authorize};
use super::listener::Peer;
use super::{Caller, Role};
use crate::compliance::export::mbox_entry;
use crate::compliance::search::{hit_json, search};
use crate::compliance::select::{Filter, Selection, walk};

/// Search results per page unless asked, and at most.
const PAGE: usize = 50;
const PAGE_MAX: usize = 1000;
/// Most messages, and most mbox bytes, one export answers with; larger selections are
/// for `levee journal export`, which writes to disk and resumes.
const EXPORT_CAP: Cap = Cap {
    messages: 10_000,
    bytes: 256 * 1024 * 1024,
};
/// mbox bytes buffered between the journal reader and a slow client.
const EXPORT_PIPE: usize = 256 * 1024;
/// Longest request target quoted in the audit record of a refused call.
const MAX_QUOTED: usize = 300;

const SEQ_HEADER: HeaderName = HeaderName::from_static("x-levee-seq");
const SHA256_HEADER: HeaderName = HeaderName::from_static("x-levee-sha256");
const COUNT_HEADER: HeaderName = HeaderName::from_static("x-levee-count");

/// The query of a search or an export: the filters of `levee journal search`, and for a
/// search the page. Its own fields, not a flattened [`Selection`]: serde cannot refuse
/// unknown fields through a flatten, nor read numbers from a query string inside one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    since: Option<String>,
    until: Option<String>,
    from: Option<String>,
    rcpt: Option<String>,
    message_id: Option<String>,
    subject: Option<String>,
    user: Option<String>,
    direction: Option<Direction>,
    limit: Option<usize>,
    /// Only records after this seq (the previous page's `next_after`).
    after: Option<Seq>,
}

/// How much one export may carry.
#[derive(Debug, Clone, Copy)]
struct Cap {
    messages: usize,
    /// Of mbox, `From ` lines and quoting included.
    bytes: u64,
}

/// The `direction` filter; any other value is refused when the request is parsed.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// As `levee journal search --direction` takes it.
    pub(super) fn name(self) -> String {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
        .to_owned()
    }
}

/// The filters of a selection, checked as the CLI checks them: a bad date is a 400.
pub(super) fn checked(selection: &Selection) -> Result<Filter, ApiError> {
    Filter::parse(selection).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

impl JournalQuery {
    fn parse(query: Result<Query<JournalQuery>, QueryRejection>) -> Result<Self, ApiError> {
        query
            .map(|Query(query)| query)
            .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))
    }

    /// The filters, checked as the CLI checks them.
    fn filter(&self) -> Result<Filter, ApiError> {
        let selection = Selection {
            since: self.since.clone(),
            until: self.until.clone(),
            from: self.from.clone(),
            to: self.rcpt.clone(),
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            user: self.user.clone(),
            direction: self.direction.map(Direction::name),
        };
        checked(&selection)
    }
}

/// `GET /v1/journal/search`: one page of matching messages, oldest first.
pub(super) async fn search_messages(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Viewer, "journal search").await?;
    let outcome = find(&state.parts.journal, query).await;
    audited(&state, &caller, "journal-search", &uri, outcome)
        .await
        .map(Json)
}

async fn find(
    journal: &Journal,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<(Value, String), ApiError> {
    let query = JournalQuery::parse(query)?;
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {PAGE_MAX}"),
        ));
    }
    let after = query.after.unwrap_or(0);
    let (journal, wanted) = (journal.clone(), filter.clone());
    let (results, next_after) = blocking(move || {
        let (hits, next_after) = search(&journal, &wanted, after, limit)?;
        Ok((hits.iter().map(hit_json).collect::<Vec<_>>(), next_after))
    })
    .await?;
    let detail = format!("{filter:?}, after {after}: {} found", results.len());
    Ok((
        json!({ "results": results, "next_after": next_after }),
        detail,
    ))
}

/// `GET /v1/journal/messages/{seq}`: the message exactly as journaled.
pub(super) async fn message(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
    seq: Result<Path<Seq>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Viewer, "journal message").await?;
    let outcome = one_message(&state.parts.journal, seq).await;
    audited(&state, &caller, "journal-export", &uri, outcome).await
}

async fn one_message(
    journal: &Journal,
    seq: Result<Path<Seq>, PathRejection>,
) -> Result<(Response, String), ApiError> {
    let Path(seq) = seq.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let journal = journal.clone();
    let record = blocking(move || journal.get(seq).map_err(|e| e.to_string())).await?;
    let Some((body_sha256, message)) = record.and_then(|r| match r.kind {
        RecordKind::Message(m) => Some((r.body_sha256, m)),
        _ => None,
    }) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no journaled message with seq {seq}"),
        ));
    };
    let detail = format!("message {seq}: {} bytes", message.body.len());
    let sha256 = HeaderValue::from_str(&hex::encode(body_sha256)).expect("hex is a header value");
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("message/rfc822"),
        ),
        (SEQ_HEADER, HeaderValue::from(seq)),
        (SHA256_HEADER, sha256),
    ];
    Ok(((headers, message.body).into_response(), detail))
}

/// `GET /v1/journal/export`: every matching message as one mboxrd file, oldest first.
pub(super) async fn export(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Viewer, "journal export").await?;
    let outcome = mbox(&state.parts.journal, query).await;
    audited(&state, &caller, "journal-export", &uri, outcome).await
}

async fn mbox(
    journal: &Journal,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<(Response, String), ApiError> {
    let query = JournalQuery::parse(query)?;
    if query.limit.is_some() || query.after.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit and after page a search; an export takes the filters only",
        ));
    }
    let filter = query.filter()?;
    let (reader, wanted) = (journal.clone(), filter.clone());
    let measured = blocking(move || measure(&reader, &wanted, EXPORT_CAP)).await?;
    let Some((seqs, bytes)) = measured else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the selection holds more than {} messages or {} MiB: \
                 narrow it (since, until, from, rcpt, ...) or run `levee journal export` on \
                 the server",
                EXPORT_CAP.messages,
                EXPORT_CAP.bytes / (1024 * 1024)
            ),
        ));
    };
    let count = seqs.len();
    let detail = format!("{filter:?} as mbox: {count} messages, {bytes} bytes");
    let (pipe, writer) = tokio::io::duplex(EXPORT_PIPE);
    tokio::spawn(stream_mbox(journal.clone(), seqs, writer));
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/mbox"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(bytes)),
        (COUNT_HEADER, HeaderValue::from(count)),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"levee-journal.mbox\""),
        ),
    ];
    let body = Body::from_stream(FramedRead::new(pipe, BytesCodec::new()));
    Ok(((headers, body).into_response(), detail))
}

/// The seqs of the selected messages and the length of their mbox, or `None` when they
/// are more than `cap`.
fn measure(
    journal: &Journal,
    filter: &Filter,
    cap: Cap,
) -> Result<Option<(Vec<Seq>, u64)>, String> {
    let (mut seqs, mut bytes, mut over) = (Vec::new(), 0u64, false);
    walk(journal, filter, 0, |record| {
        if let RecordKind::Message(m) = &record.kind {
            bytes += mbox_entry(record.time_ms, &m.mail_from, &m.body).len() as u64;
            seqs.push(record.seq);
        }
        over = seqs.len() > cap.messages || bytes > cap.bytes;
        Ok(over)
    })?;
    Ok((!over).then_some((seqs, bytes)))
}

/// Writes the mbox entry of each of `seqs` into `pipe`. Stops early when the client went
/// away; a record that cannot be read ends the body short of its Content-Length, which
/// the client sees as a broken transfer, never as a complete export.
async fn stream_mbox(journal: Journal, seqs: Vec<Seq>, mut pipe: tokio::io::DuplexStream) {
    for seq in seqs {
        let reader = journal.clone();
        let entry = tokio::task::spawn_blocking(move || match reader.get(seq) {
            Ok(Some(record)) => match &record.kind {
                RecordKind::Message(m) => Ok(mbox_entry(record.time_ms, &m.mail_from, &m.body)),
                _ => Err("not a message record".to_owned()),
            },
            Ok(None) => Err("no such record".to_owned()),
            Err(err) => Err(err.to_string()),
        })
        .await
        .unwrap_or_else(|err| Err(err.to_string()));
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::error!(seq, %err, "admin API: journal export cut short");
                return;
            }
        };
        if pipe.write_all(&entry).await.is_err() {
            tracing::info!(seq, "admin API: journal export abandoned by the client");
            return;
        }
    }
    let _ = pipe.shutdown().await;
}

/// Runs a journal read off the async workers; a failure is logged and answered 500.
pub(super) async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    let failed = |err: String| {
        tracing::error!(%err, "admin API: reading the journal");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the journal could not be read",
        )
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(failed(err)),
        Err(err) => Err(failed(err.to_string())),
    }
}

/// Records `action` by `caller` with what came of it (the detail of an answer, or the
/// request and the error it got), then passes the answer on.
async fn audited<T>(
    state: &AdminState,
    caller: &Caller,
    action: &str,
    uri: &Uri,
    outcome: Result<(T, String), ApiError>,
) -> Result<T, ApiError> {
    let detail = match &outcome {
        Ok((_, detail)) => detail.clone(),
        Err(err) => {
            let asked = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            let asked: String = asked.chars().take(MAX_QUOTED).collect();
            format!("{asked}: {}: {}", err.status(), err.message())
        }
    };
    audit(&state.parts.journal, caller.name.clone(), action, detail).await;
    outcome.map(|(answer, _)| answer)
}

#[cfg(test)]
mod tests {
    use levee_journal::{ClientInfo, JournalOptions, MessageRecord, NewRecord};

    use super::*;

    /// A journal of three messages (a body with a `From ` line among them) and an audit
    /// record between them.
    async fn journal(dir: &std::path::Path) -> Journal {
        let journal = Journal::open(dir, JournalOptions::default()).unwrap();
        for (i, body) in ["one\r\n", "From here on\r\n", "three"].iter().enumerate() {
            let message = MessageRecord {
                mail_from: "a@example.org".into(),
                rcpt_to: vec![format!("r{i}@example.test")],
                client: ClientInfo::default(),
                message_id: Some(format!("m{i}@x")),
                body: body.as_bytes().to_vec(),
            };
            let kind = RecordKind::Message(message);
            journal
                .append(NewRecord { time_ms: 1, kind })
                .await
                .unwrap();
            let audit = NewRecord::audit(2, "x".into(), "y", String::new());
            journal.append(audit).await.unwrap();
        }
        journal
    }

    #[tokio::test]
    async fn an_export_is_measured_exactly_and_refused_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path()).await;
        let all = Filter::default();
        let roomy = Cap {
            messages: 3,
            bytes: u64::MAX,
        };
        let (seqs, bytes) = measure(&journal, &all, roomy).unwrap().unwrap();
        assert_eq!(seqs, [1, 3, 5]);
        let mut mbox = Vec::new();
        for seq in &seqs {
            let record = journal.get(*seq).unwrap().unwrap();
            mbox.extend(mbox_entry(
                record.time_ms,
                "a@example.org",
                record.kind.body(),
            ));
        }
        assert_eq!(bytes, mbox.len() as u64);

        let two = Cap {
            messages: 2,
            ..roomy
        };
        assert_eq!(measure(&journal, &all, two).unwrap(), None);
        let short = Cap {
            bytes: bytes - 1,
            ..roomy
        };
        assert_eq!(measure(&journal, &all, short).unwrap(), None);
        let exact = Cap { bytes, ..roomy };
        assert!(measure(&journal, &all, exact).unwrap().is_some());
        let one = Filter {
            to: Some("r1@example.test".into()),
            ..Filter::default()
        };
        let (seqs, _) = measure(&journal, &one, two).unwrap().unwrap();
        assert_eq!(seqs, [3]);
    }
}
