//! Metric names of the proxy, declared once, and the Prometheus endpoint that serves them.
//!
//! The recorder is process-wide (the `metrics` facade allows one), so it is installed once
//! and every `run` in the process renders from the same handle.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SESSIONS_TOTAL: &str = "levee_sessions_total";
pub const SESSIONS_ACTIVE: &str = "levee_sessions_active";
pub const MESSAGES_ACCEPTED: &str = "levee_messages_accepted_total";
pub const MESSAGES_DELIVERED: &str = "levee_messages_delivered_total";
pub const MESSAGES_DEFERRED: &str = "levee_messages_deferred_total";
pub const MESSAGES_REFUSED: &str = "levee_messages_refused_total";
pub const MESSAGES_RESENT: &str = "levee_messages_resent_total";
pub const MESSAGES_FAILED: &str = "levee_messages_failed_total";
pub const MESSAGE_BYTES: &str = "levee_message_bytes_total";
pub const UPSTREAM_FAILURES: &str = "levee_upstream_failures_total";
pub const UPSTREAM_REUSED: &str = "levee_upstream_reused_total";
pub const TLS_FAILURES: &str = "levee_tls_failures_total";
pub const CONNECTIONS_REFUSED: &str = "levee_connections_refused_total";
pub const TLS_RELOADS: &str = "levee_tls_reloads_total";
pub const SMTP_PROTOCOL_ERRORS: &str = "levee_smtp_protocol_errors_total";
pub const ACTIVE_BACKEND: &str = "levee_active_backend";
pub const EPOCH: &str = "levee_epoch";
pub const FAILOVER_TRANSITIONS: &str = "levee_failover_transitions_total";
pub const IMAP_MIGRATIONS: &str = "levee_imap_migrations_total";
pub const IMAP_HIBERNATING: &str = "levee_imap_sessions_hibernating";
pub const IMAP_HIBERNATIONS: &str = "levee_imap_hibernations_total";
pub const IMAP_WAKES: &str = "levee_imap_wakes_total";
pub const IMAP_PROTOCOL_ERRORS: &str = "levee_imap_protocol_errors_total";
pub const IMAP_CHANGES_JOURNALED: &str = "levee_imap_changes_journaled_total";
pub const IMAP_CHANGES_LOST: &str = "levee_imap_changes_lost_total";
pub const IMAP_UID_CONTINUITY_LOST: &str = "levee_imap_uid_continuity_lost_total";
pub const IMAP_REPLICA_LISTS: &str = "levee_imap_replica_lists_total";
pub const DELIVERY_QUEUE: &str = "levee_delivery_queue";
pub const RESYNC_PENDING: &str = "levee_resync_pending";
pub const RESYNC_DELIVERED: &str = "levee_resync_delivered_total";

fn describe() {
    describe_counter!(SESSIONS_TOTAL, "Client sessions accepted, by protocol");
    describe_gauge!(SESSIONS_ACTIVE, "Client sessions open now, by protocol");
    describe_counter!(
        MESSAGES_ACCEPTED,
        "Messages journaled durably and acknowledged"
    );
    describe_counter!(MESSAGES_DELIVERED, "Messages the upstream accepted");
    describe_counter!(
        MESSAGES_DEFERRED,
        "Messages kept for a later delivery attempt"
    );
    describe_counter!(MESSAGES_REFUSED, "Messages refused, by reason");
    describe_counter!(
        MESSAGES_RESENT,
        "Messages sent again by a client that lost the reply, answered with the first record"
    );
    describe_counter!(
        MESSAGES_FAILED,
        "Messages given up on after retries or a 5xx on retry"
    );
    describe_counter!(MESSAGE_BYTES, Unit::Bytes, "Message bytes accepted");
    describe_counter!(UPSTREAM_FAILURES, "Upstream connections that failed");
    describe_counter!(
        UPSTREAM_REUSED,
        "Client sessions served over a pooled upstream connection"
    );
    describe_counter!(TLS_FAILURES, "Client TLS handshakes that failed");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused at once, by protocol and reason (per_ip)"
    );
    describe_counter!(
        TLS_RELOADS,
        "Reloads of the TLS certificate on SIGHUP, by result (ok, failed)"
    );
    describe_counter!(SMTP_PROTOCOL_ERRORS, "SMTP commands refused as malformed");
    describe_gauge!(
        ACTIVE_BACKEND,
        "0 while the primary site is active, 1 the replica"
    );
    describe_gauge!(EPOCH, "Failover epoch: bumped by every transition");
    describe_counter!(
        FAILOVER_TRANSITIONS,
        "Changes of the active backend (automatic or by an admin)"
    );
    describe_gauge!(
        IMAP_HIBERNATING,
        "IMAP sessions in IDLE whose connection to the IMAP server levee has closed"
    );
    describe_counter!(
        IMAP_HIBERNATIONS,
        "IMAP sessions that went into hibernation (IDLE served by levee)"
    );
    describe_counter!(
        IMAP_WAKES,
        "hibernating IMAP sessions opened again on the IMAP server for a client command"
    );
    describe_counter!(
        IMAP_MIGRATIONS,
        "IMAP sessions moved to another server without the client reconnecting"
    );
    describe_counter!(
        IMAP_PROTOCOL_ERRORS,
        "IMAP sessions ended for protocol abuse (over-long lines, STARTTLS injection)"
    );
    describe_counter!(
        IMAP_CHANGES_JOURNALED,
        "Mailbox changes made by IMAP clients at the primary and journaled for the replica"
    );
    describe_counter!(
        IMAP_CHANGES_LOST,
        "Mailbox changes that could not be journaled (the replica will not see them)"
    );
    describe_counter!(
        IMAP_UID_CONTINUITY_LOST,
        "Mailboxes whose messages at the replica could not keep the primary's UIDs"
    );
    describe_counter!(
        IMAP_REPLICA_LISTS,
        "Lists of a mailbox's messages at the replica: fetched whole, only what changed, or kept (a follower at the replica started from the list kept before the failover)"
    );
    describe_gauge!(DELIVERY_QUEUE, "Journaled messages waiting for delivery");
    describe_gauge!(
        RESYNC_PENDING,
        "Messages accepted while the replica was active that the primary has yet to receive"
    );
    describe_counter!(
        RESYNC_DELIVERED,
        "Copies of such messages the primary's MTA accepted"
    );
    levee_journal::metrics::describe();
    levee_replica::metrics::describe();
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first call. `None` when another recorder was
/// installed first (then the endpoint is not served).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(err) => {
                tracing::warn!(%err, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// A snapshot of the daemon's state for `GET /status`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Serves `GET /metrics` (Prometheus) and `GET /status` (JSON) on `listener` until
/// `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shutdown: CancellationToken,
    status: StatusFn,
) -> std::io::Result<()> {
    let Some(handle) = handle() else {
        return Ok(());
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { handle.render() }),
        )
        .route(
            "/status",
            axum::routing::get(move || {
                let status = status.clone();
                async move { axum::Json(status()) }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
