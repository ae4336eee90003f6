//! The admin API: `GET /v1/status`, `GET /v1/audit?before=&limit=` and `GET /metrics`
//! (Prometheus text) (viewer),
//! `GET /v1/journal/search?since=&until=&from=&rcpt=&message_id=&subject=&user=&direction=&limit=&after=`
//! (matching messages, a page at a time), `GET /v1/journal/messages/{seq}` (one message as
//! journaled, `message/rfc822`) and `GET /v1/journal/export?<the same filters>` (an mbox)
//! (viewer, each an audit record), `GET /v1/journal/holds` (every legal hold) (viewer),
//! `POST /v1/switchover {to, reason}`, `POST /v1/failback {reason}`,
//! `POST /v1/journal/holds {reason, <the same filters>}` (a legal hold on the matching
//! messages) and `POST /v1/journal/holds/{id}/release {reason}` (operator). Every request
//! carries `Authorization: Bearer <token>`; every refused one (no token, a wrong one, too
//! weak a role) is answered 401/403, changes nothing, and is an audit record in the
//! journal, as is every switch, hold and release. Errors are JSON: `{"error": "..."}`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use levee_journal::{Journal, NewRecord, RecordKind};
use serde::Deserialize;
use serde_json::json;

use super::listener::Peer;
use super::switch::switch;
use super::{Caller, FailedLogins, Role, Tokens, holds, journal};
use crate::failover::controller::Backend;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest `reason` accepted.
const MAX_REASON: usize = 500;

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    pub tokens: Tokens,
    pub limiter: Mutex<FailedLogins>,
    /// One switch at a time: a second request waits, then finds the site already active.
    pub switching: tokio::sync::Mutex<()>,
    pub drain_timeout: std::time::Duration,
    pub parts: super::Parts,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/switchover", post(switchover))
        .route("/v1/failback", post(failback))
        .route("/v1/audit", get(audit_log))
        .route("/v1/journal/search", get(journal::search_messages))
        .route("/v1/journal/messages/{seq}", get(journal::message))
        .route("/v1/journal/export", get(journal::export))
        .route("/v1/journal/holds", get(holds::list).post(holds::place))
        .route("/v1/journal/holds/{id}/release", post(holds::release))
        .route("/metrics", get(metrics))
        .merge(super::console::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An answer other than 200.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"levee\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(super) async fn audit(journal: &Journal, actor: String, action: &str, detail: String) {
    let record = NewRecord::audit(crate::smtp::now_ms(), actor, action, detail);
    if let Err(err) = journal.append(record).await {
        tracing::error!(%err, action, "cannot journal an admin audit record");
    }
}

/// The caller, if their token is good and their role is at least `need`.
pub(super) async fn authorize(
    state: &AdminState,
    peer: Peer,
    headers: &HeaderMap,
    need: Role,
    what: &str,
) -> Result<Caller, ApiError> {
    let ip = peer.0.ip();
    let allowed = state
        .limiter
        .lock()
        .expect("limiter")
        .allow(ip, Instant::now());
    if let Err(wait) = allowed {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address; try again later",
        );
        err.retry_after = Some(wait.as_secs().max(1));
        return Err(err);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let caller = match token {
        Some(token) => {
            let tokens = state.tokens.clone();
            tokio::task::spawn_blocking(move || tokens.check(&token))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let Some(caller) = caller else {
        state
            .limiter
            .lock()
            .expect("limiter")
            .failed(ip, Instant::now());
        tracing::warn!(%ip, what, "admin API: refused, no valid token");
        audit(
            &state.parts.journal,
            format!("unknown@{ip}"),
            "admin-refused",
            format!("{what}: no valid token"),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ));
    };
    state.limiter.lock().expect("limiter").succeeded(ip);
    if caller.role < need {
        tracing::warn!(%ip, caller = %caller.name, what, "admin API: refused, role too weak");
        audit(
            &state.parts.journal,
            caller.name.clone(),
            "admin-refused",
            format!("{what}: needs the {need} role, token has {}", caller.role),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{what} needs an {need} token"),
        ));
    }
    Ok(caller)
}

async fn status(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, peer, &headers, Role::Viewer, "status").await?;
    Ok(Json((state.parts.status)()))
}

async fn metrics(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, peer, &headers, Role::Viewer, "metrics").await?;
    let Some(handle) = crate::metrics::handle() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process",
        ));
    };
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], handle.render()).into_response())
}

/// Audit records per page unless asked, and at most.
const AUDIT_PAGE: usize = 50;
const AUDIT_PAGE_MAX: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records with a lower seq than this (the previous page's `next_before`).
    before: Option<u64>,
    limit: Option<usize>,
}

/// The journal's audit records, newest first.
async fn audit_log(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, peer, &headers, Role::Viewer, "audit").await?;
    let Query(query) = query.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let limit = query.limit.unwrap_or(AUDIT_PAGE);
    if limit == 0 || limit > AUDIT_PAGE_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {AUDIT_PAGE_MAX}"),
        ));
    }
    let journal = state.parts.journal.clone();
    let before = query.before.unwrap_or(u64::MAX);
    let page = tokio::task::spawn_blocking(move || journal.audit_before(before, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::error!(%e, "admin API: reading audit records");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the journal could not be read",
            )
        })?;
    let next_before = (page.len() == limit)
        .then(|| page.last().map(|r| r.seq))
        .flatten();
    let records: Vec<serde_json::Value> = page
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Audit(a) => Some(json!({
                "seq": r.seq,
                "time": rfc3339(r.time_ms),
                "actor": a.actor,
                "action": a.action,
                "detail": a.detail,
            })),
            _ => None,
        })
        .collect();
    Ok(Json(
        json!({ "records": records, "next_before": next_before }),
    ))
}

/// `ms` since the Unix epoch as RFC 3339, UTC.
fn rfc3339(ms: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    to: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailbackRequest {
    reason: String,
}

pub(super) fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(t)| t).map_err(|rejection| {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    })
}

pub(super) fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reason must be 1 to {MAX_REASON} bytes"),
        ));
    }
    Ok(())
}

async fn switchover(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    parsed: Result<Json<SwitchoverRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Operator, "switchover").await?;
    let request = body(parsed)?;
    check_reason(&request.reason)?;
    let to = match request.to.as_str() {
        "replica" => Backend::Replica,
        "primary" => Backend::Primary,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("to must be \"replica\" or \"primary\", not {other:?}"),
            ));
        }
    };
    switch(&state, &caller, to, "switchover", &request.reason).await
}

async fn failback(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    parsed: Result<Json<FailbackRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&state, peer, &headers, Role::Operator, "failback").await?;
    let request = body(parsed)?;
    check_reason(&request.reason)?;
    switch(
        &state,
        &caller,
        Backend::Primary,
        "failback",
        &request.reason,
    )
    .await
}
