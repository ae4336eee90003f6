//! An admin's switch of the active site. A planned switchover from the primary to the
//! replica drains first: new SMTP transactions are deferred (451 4.3.0) while levee waits,
//! at most `[admin] drain_timeout`, until the replica holds every journal record up to the
//! head it saw when deferring began; only then does the site switch. A transaction already
//! past MAIL FROM may still finish afterwards: its record follows the same stream and the
//! replica's applier delivers it, so nothing acknowledged is lost either way.

use std::time::Instant;

use axum::Json;
use axum::http::StatusCode;
use serde_json::json;

use super::Caller;
use super::api::{AdminState, ApiError, audit};
use crate::failover::controller::Backend;

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
    let planned = to == Backend::Replica && failover.active().backend == Backend::Primary;
    let mut drained = serde_json::Value::Null;
    if planned && let Some(replicator) = &state.parts.replicator {
        failover.set_draining(true);
        let started = Instant::now();
        let head = journal.head();
        let caught_up = replicator
            .status
            .wait_acked(head, state.drain_timeout)
            .await;
        let acked = replicator.status.current().acked;
        drained = json!({
            "head": head,
            "replica_acked": acked,
            "waited_ms": started.elapsed().as_millis() as u64,
        });
        if !caught_up {
            failover.set_draining(false);
            let detail = format!(
                "the replica did not catch up within {:?}: it holds records through {acked} of {head}; nothing switched",
                state.drain_timeout
            );
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
