//! An admin's switch of the active site. Either way new SMTP transactions wait while the
//! new site is made ready; a failback to the primary first has the primary's MTA take every
//! message accepted while the replica was active (see [`crate::resync`]), and refuses
//! when that does not finish within `[admin] drain_timeout`. A planned switchover from
//! the primary to the replica drains first: new SMTP transactions wait at MAIL FROM (451 4.3.0 only past the drain's limit) while levee waits,
//! at most `[admin] drain_timeout`, until the replica holds every journal record up to the
//! head it saw when deferring began, and its mail server has them applied (when the
//! replica reports that); only then does the site switch. A transaction already
//! past MAIL FROM may still finish afterwards: its record follows the same stream and the
//! replica's applier delivers it, so nothing acknowledged is lost either way.

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use serde_json::json;

use super::Caller;
use super::api::{AdminState, ApiError, audit};
use crate::failover::controller::Backend;
use crate::replication::Replicator;
use crate::resync::Resync;
use levee_journal::Seq;

/// Switches to `to` for `caller`; `action` (switchover, failback) names it in the audit log.
pub(super) async fn switch(
    state: &AdminState,
    caller: &Caller,
    to: Backend,
    action: &str,
    reason: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(failover) = &state.parts.failover else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no replica site is configured: there is nothing to switch to",
        ));
    };
    let journal = &state.parts.journal;
    let _one_at_a_time = state.switching.lock().await;
    let mut drained = serde_json::Value::Null;
    if failover.active().backend != to {
        failover.set_draining(true);
        let limit = state.drain_timeout;
        let ready = match (to, &state.parts.replicator, &state.parts.resync) {
            (Backend::Replica, Some(replicator), _) => {
                drain(replicator, journal.head(), limit).await
            }
            (Backend::Primary, _, Some(resync)) => catch_up_primary(resync, limit).await,
            _ => Ok(serde_json::Value::Null),
        };
        match ready {
            Ok(report) => drained = report,
            Err(detail) => {
                failover.set_draining(false);
                audit(
                    journal,
                    caller.name.clone(),
                    &format!("{action}-refused"),
                    format!("to {to:?}: {detail}"),
                )
                .await;
                return Err(ApiError::new(StatusCode::CONFLICT, detail));
            }
        }
    }
    let why = format!("{action} by {}: {reason}", caller.name);
    let switched = failover.switch(to, why, false).await;
    failover.set_draining(false);
    match switched {
        Ok(active) => {
            tracing::warn!(caller = %caller.name, ?to, epoch = active.epoch, %drained, "admin {action}");
            Ok(Json(json!({ "active": active, "drained": drained })))
        }
        Err(refusal) => {
            audit(
                journal,
                caller.name.clone(),
                &format!("{action}-refused"),
                format!("to {to:?}: {refusal}"),
            )
            .await;
            Err(ApiError::new(StatusCode::CONFLICT, refusal.to_string()))
        }
    }
}

/// Waits, at most `limit` in all, until the replica holds every record through `head`
/// durably and its mail server has them applied. `Err` says how far it got.
async fn drain(
    replicator: &Replicator,
    head: Seq,
    limit: Duration,
) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let status = &replicator.status;
    let durable = status.wait_acked(head, limit).await;
    let link = status.current();
    if !durable {
        return Err(format!(
            "the replica did not catch up within {limit:?}: it holds records through {} of {head}; nothing switched",
            link.acked
        ));
    }
    // A replica that does not apply (or speaks protocol 1) never reports; it has the
    // journal, and its applier delivers from it when it runs.
    let applied = match link.applied {
        None => None,
        Some(_) => {
            let left = limit.saturating_sub(started.elapsed());
            if !status.wait_applied(head, left).await {
                return Err(format!(
                    "the replica's mail server did not catch up within {limit:?}: it has records through {} of {head} (the replica journal holds them all; its applier is still delivering or retrying); nothing switched",
                    status.current().applied.unwrap_or(0)
                ));
            }
            status.current().applied
        }
    };
    Ok(json!({
        "head": head,
        "replica_acked": status.current().acked,
        "replica_applied": applied,
        "waited_ms": started.elapsed().as_millis() as u64,
    }))
}

/// Waits, at most `limit`, until the primary's MTA has every message accepted while the
/// replica was active. `Err` says what is missing.
async fn catch_up_primary(resync: &Resync, limit: Duration) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let before = resync.current();
    if !resync.wait_clear(limit).await {
        let now = resync.current();
        let why = now.last_error.unwrap_or_else(|| "still copying".into());
        return Err(format!(
            "the primary has not yet received {} message(s) or mailbox change(s) made while the replica was active (within {limit:?}; last try: {why}); nothing switched",
            now.pending.max(1)
        ));
    }
    let now = resync.current();
    Ok(json!({
        "primary_copied": now.delivered.saturating_sub(before.delivered),
        "primary_refused": now.refused.saturating_sub(before.refused),
        "waited_ms": started.elapsed().as_millis() as u64,
    }))
}
