//! Legal holds on a running levee: the list for viewer tokens; placing a hold on the
//! messages a selection matches (the filters of a journal search) and releasing one for
//! operator tokens. The journal calls are those of `levee journal hold|holds|release`,
//! which only work on a stopped journal.
//!
//! A hold and a release are audit records themselves (`journal-hold`, `journal-release`,
//! naming the caller's token), so a call that succeeds writes no other; a refused caller
//! is audited by [`authorize`]. Holds are made in the primary's journal only: a replica's
//! journal continues the primary's chain and takes no records of its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use levee_journal::{Journal, JournalError, Seq};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Role;
use super::api::{AdminState, ApiError, authorize, body, check_reason};
use super::journal::{Direction, blocking, checked};
use super::listener::Peer;
use crate::compliance::ROLE_KEY;
use crate::compliance::select::{Filter, Selection, walk};

/// Most messages one hold placed over the API may cover: their seqs are gathered in
/// memory first, and the hold's record lists them as ranges.
const HOLD_MAX: usize = 1_000_000;

/// `POST /v1/journal/holds`: why, and the filters of `GET /v1/journal/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    reason: String,
    since: Option<String>,
    until: Option<String>,
    from: Option<String>,
    rcpt: Option<String>,
    message_id: Option<String>,
    subject: Option<String>,
    user: Option<String>,
    direction: Option<Direction>,
}

impl HoldRequest {
    fn selection(&self) -> Selection {
        Selection {
            since: self.since.clone(),
            until: self.until.clone(),
            from: self.from.clone(),
            to: self.rcpt.clone(),
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            user: self.user.clone(),
            direction: self.direction.map(Direction::name),
        }
    }
}

/// `POST /v1/journal/holds/{id}/release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    reason: String,
}

/// `GET /v1/journal/holds`: every hold ever placed, oldest first, released ones included.
pub(super) async fn list(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, peer, &headers, Role::Viewer, "journal holds").await?;
    let journal = state.parts.journal.clone();
    let holds = blocking(move || journal.holds().map_err(|e| e.to_string())).await?;
    Ok(Json(json!({ "holds": holds })))
}

/// `POST /v1/journal/holds`: a hold on every message the filters match.
pub(super) async fn place(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    parsed: Result<Json<HoldRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Operator, "journal hold").await?;
    let request = body(parsed)?;
    check_reason(&request.reason)?;
    let filter = checked(&request.selection())?;
    let (id, records) = hold(
        &state.parts.journal,
        caller.name,
        &request.reason,
        &filter,
        HOLD_MAX,
    )
    .await?;
    Ok(Json(json!({ "hold": id, "records": records })))
}

/// `POST /v1/journal/holds/{id}/release`: lifts hold `id`.
pub(super) async fn release(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    id: Result<Path<Seq>, PathRejection>,
    parsed: Result<Json<ReleaseRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Operator, "journal release").await?;
    let Path(id) = id.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let request = body(parsed)?;
    check_reason(&request.reason)?;
    lift(&state.parts.journal, caller.name, id, &request.reason).await?;
    Ok(Json(json!({ "hold": id, "released": true })))
}

/// Places a hold by `actor` on the messages `filter` matches, at most `cap` of them;
/// returns its id and how many it covers.
async fn hold(
    journal: &Journal,
    actor: String,
    reason: &str,
    filter: &Filter,
    cap: usize,
) -> Result<(Seq, usize), ApiError> {
    primary_only(journal).await?;
    let (reader, wanted) = (journal.clone(), filter.clone());
    let Some(seqs) = blocking(move || select(&reader, &wanted, cap)).await? else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the selection holds more than {cap} messages: narrow it (since, until, \
                 from, rcpt, ...) and place several holds"
            ),
        ));
    };
    let placed = journal
        .hold(
            crate::smtp::now_ms(),
            actor,
            reason,
            format!("{filter:?}"),
            &seqs,
        )
        .await;
    match placed {
        Ok(id) => Ok((id, seqs.len())),
        // A selection that matches nothing.
        Err(JournalError::Retention(text)) => Err(ApiError::new(StatusCode::BAD_REQUEST, text)),
        Err(err) => Err(unrecorded("hold", err)),
    }
}

/// Releases hold `id` on behalf of `actor`.
async fn lift(journal: &Journal, actor: String, id: Seq, reason: &str) -> Result<(), ApiError> {
    primary_only(journal).await?;
    let text = match journal
        .release(crate::smtp::now_ms(), actor, id, reason)
        .await
    {
        Ok(()) => return Ok(()),
        Err(JournalError::Retention(text)) => text,
        Err(err) => return Err(unrecorded("release", err)),
    };
    // The reason was checked, so the journal refused because there is no such hold or
    // because it is released already; which one is read back rather than told by words.
    let reader = journal.clone();
    let holds = blocking(move || reader.holds().map_err(|e| e.to_string())).await?;
    let status = if holds.iter().any(|h| h.id == id) {
        StatusCode::CONFLICT
    } else {
        StatusCode::NOT_FOUND
    };
    Err(ApiError::new(status, text))
}

/// Refuses a hold or a release in a replica's journal.
async fn primary_only(journal: &Journal) -> Result<(), ApiError> {
    let reader = journal.clone();
    let role = blocking(move || reader.get_meta(ROLE_KEY).map_err(|e| e.to_string())).await?;
    if role.as_deref() == Some(b"replica".as_slice()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this is a replica's journal: holds are placed and released in the primary's, \
             and the replica follows",
        ));
    }
    Ok(())
}

/// The seqs of the selected messages, ascending, or `None` when they are more than `cap`.
fn select(journal: &Journal, filter: &Filter, cap: usize) -> Result<Option<Vec<Seq>>, String> {
    let mut seqs = Vec::new();
    walk(journal, filter, 0, |record| {
        seqs.push(record.seq);
        Ok(seqs.len() > cap)
    })?;
    Ok((seqs.len() <= cap).then_some(seqs))
}

/// A hold or a release the journal failed to record: logged, and answered 503 when the
/// disk is full (worth another try later), else 500.
fn unrecorded(what: &str, err: JournalError) -> ApiError {
    tracing::error!(%err, "admin API: the journal could not record a {what}");
    let status = match err {
        JournalError::Full => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, format!("the journal could not record the {what}"))
}

#[cfg(test)]
mod tests {
    use levee_journal::{ClientInfo, JournalOptions, MessageRecord, NewRecord, RecordKind};

    use super::*;

    /// A journal of three messages, to r0, r1 and r0 again.
    async fn journal(dir: &std::path::Path) -> Journal {
        let journal = Journal::open(dir, JournalOptions::default()).unwrap();
        for rcpt in ["r0", "r1", "r0"] {
            let message = MessageRecord {
                mail_from: "a@example.org".into(),
                rcpt_to: vec![format!("{rcpt}@example.test")],
                client: ClientInfo::default(),
                message_id: None,
                body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
            };
            let kind = RecordKind::Message(message);
            journal
                .append(NewRecord { time_ms: 1, kind })
                .await
                .unwrap();
        }
        journal
    }

    fn to(rcpt: &str) -> Filter {
        Filter {
            to: Some(rcpt.into()),
            ..Filter::default()
        }
    }

    #[tokio::test]
    async fn a_hold_covers_its_selection_and_is_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path()).await;
        let r0 = to("r0@example.test");
        let (id, records) = hold(&journal, "desk".into(), "matter 7", &r0, 10)
            .await
            .unwrap();
        assert_eq!(records, 2);
        assert!(journal.is_held(1).unwrap() && journal.is_held(3).unwrap());
        assert!(!journal.is_held(2).unwrap());

        let nothing = hold(&journal, "desk".into(), "x", &to("nobody@x"), 10)
            .await
            .unwrap_err();
        assert_eq!(nothing.status(), StatusCode::BAD_REQUEST);
        assert!(
            nothing.message().contains("matches no record"),
            "{nothing:?}"
        );
        let over = hold(&journal, "desk".into(), "x", &r0, 1)
            .await
            .unwrap_err();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(journal.holds().unwrap().len(), 1);

        let unknown = lift(&journal, "desk".into(), id + 100, "done")
            .await
            .unwrap_err();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        lift(&journal, "desk".into(), id, "done").await.unwrap();
        assert!(!journal.is_held(1).unwrap());
        let again = lift(&journal, "desk".into(), id, "done").await.unwrap_err();
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert!(journal.holds().unwrap()[0].released);
    }

    #[tokio::test]
    async fn a_replica_journal_takes_no_hold() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal(dir.path()).await;
        journal.set_meta(ROLE_KEY, b"replica").unwrap();
        let all = Filter::default();
        let refused = hold(&journal, "desk".into(), "matter 7", &all, 10)
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        assert!(journal.holds().unwrap().is_empty());
    }
}
