//! E-mail reports to the admins (`[alerts]`): on every change of the active site
//! (automatic failover, switchover, failback), when replication to the replica has been down
//! for a while, and when it recovers. Each report says what happened, when, why, the
//! recovery time and replication lag measured, and what to do next.
//!
//! A report is journaled as a message from levee to the admins and delivered by the
//! delivery worker like any stored message: to whichever site is active, retried until it
//! gets through, replicated like the rest of the mail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_config::{Alerts, Config};
use levee_journal::{
    ClientInfo, DeliveryState, DeliveryStatus, Journal, MessageRecord, NewRecord, RecordKind,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::failover::controller::Backend;
use crate::failover::driver::{Active, Failover};
use crate::replication::Replicator;
use crate::smtp::now_ms;

/// How often health and the replication link are looked at.
const LOOK: Duration = Duration::from_millis(250);
/// Replication down this long before it is reported.
const LINK_GRACE: Duration = Duration::from_secs(30);

/// What the reports are built from.
#[derive(Debug)]
pub struct Watched {
    pub failover: Failover,
    pub replicator: Option<Replicator>,
    pub journal: Journal,
    /// Wakes the delivery worker.
    pub wake: Arc<Notify>,
}

/// One report: subject, and the body's paragraphs.
#[derive(Debug)]
struct Report {
    id: String,
    subject: String,
    text: String,
}

pub async fn run(config: Arc<Config>, watched: Watched, shutdown: CancellationToken) {
    let Some(alerts) = config.alerts.clone() else {
        return;
    };
    let mut active = watched.failover.watch();
    let mut last: Active = *active.borrow();
    let mut primary_failing_since: Option<Instant> = None;
    let mut link_down_since: Option<Instant> = None;
    let mut link_reported = false;
    let mut tick = tokio::time::interval(LOOK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = active.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *active.borrow_and_update();
                if now.backend != last.backend {
                    let report = transition(&config, &watched, last, now, primary_failing_since);
                    send(&config, &alerts, &watched, report).await;
                }
                last = now;
            }
            _ = tick.tick() => {
                let health = watched.failover.health();
                match health.primary_ok {
                    Some(false) => {
                        primary_failing_since.get_or_insert_with(Instant::now);
                    }
                    _ => primary_failing_since = None,
                }
                let Some(replicator) = &watched.replicator else { continue };
                let link = replicator.status.current();
                if link.connected {
                    link_down_since = None;
                    if std::mem::take(&mut link_reported) {
                        let report = link_report(&config, &watched, true, None);
                        send(&config, &alerts, &watched, report).await;
                    }
                } else {
                    let since = *link_down_since.get_or_insert_with(Instant::now);
                    if !link_reported && since.elapsed() >= LINK_GRACE {
                        link_reported = true;
                        let report = link_report(&config, &watched, false, link.last_error);
                        send(&config, &alerts, &watched, report).await;
                    }
                }
            }
        }
    }
}

fn site(b: Backend) -> &'static str {
    match b {
        Backend::Primary => "primary",
        Backend::Replica => "replica",
    }
}

/// Records the replica does not hold yet, and their age in seconds.
fn lag(watched: &Watched) -> String {
    let head = watched.journal.head();
    match &watched.replicator {
        None => "no replication configured".into(),
        Some(r) => {
            let link = r.status.current();
            let acked = link.acked;
            let seconds = levee_replica::shipper::lag_seconds(&watched.journal, acked);
            let applied = match link.applied {
                Some(applied) => format!("; its mail server has every record through {applied}"),
                None => String::new(),
            };
            format!(
                "the replica holds journal records through {acked} of {head} ({} behind, oldest missing {seconds:.1} s old){applied}",
                head.saturating_sub(acked)
            )
        }
    }
}

fn transition(
    config: &Config,
    watched: &Watched,
    from: Active,
    to: Active,
    failing_since: Option<Instant>,
) -> Report {
    let health = watched.failover.health();
    let automatic = !health.last_by_admin;
    let why = health
        .last_transition
        .clone()
        .unwrap_or_else(|| "not recorded".into());
    let rto = match failing_since {
        Some(since) if automatic => format!(
            "{} ms from the primary's first failed health check to the switch",
            since.elapsed().as_millis()
        ),
        _ if automatic => "not measured (no failed health check seen before the switch)".into(),
        _ => "not applicable (an admin's planned switch)".into(),
    };
    let next = match to.backend {
        Backend::Replica => {
            "Clients now use the replica site; no action is needed for mail to flow. Repair the \
             primary; once its health checks pass, fail back with `levee failback --reason ...` \
             (or the admin API). Until then the replica is the only copy of new mail."
        }
        Backend::Primary => {
            "Clients use the primary site again. Check that replication to the replica is \
             connected (`levee status`) so that the next failover finds it current."
        }
    };
    Report {
        id: format!(
            "levee-alert-{}-e{}@{}",
            config.node.id, to.epoch, config.smtp.hostname
        ),
        subject: format!(
            "levee: clients moved from the {} site to the {} site (epoch {})",
            site(from.backend),
            site(to.backend),
            to.epoch
        ),
        text: format!(
            "What happened: levee node {node} moved every client from the {from} site to the \
             {to} site; epoch {epoch}.\r\n\r\nWhy: {why}\r\n\r\nRecovery time: {rto}.\r\n\r\n\
             Replication at the switch: {lag}.\r\n\r\nPrimary health: {ph}. Replica health: \
             {rh}.\r\n\r\nWhat to do next: {next}\r\n",
            node = config.node.id,
            from = site(from.backend),
            to = site(to.backend),
            epoch = to.epoch,
            lag = lag(watched),
            ph = health_text(health.primary_ok, health.primary_error.as_deref()),
            rh = health_text(health.replica_ok, health.replica_error.as_deref()),
        ),
    }
}

fn health_text(ok: Option<bool>, error: Option<&str>) -> String {
    match ok {
        Some(true) => "ok".into(),
        Some(false) => format!("failing ({})", error.unwrap_or("no detail")),
        None => "not checked yet".into(),
    }
}

fn link_report(config: &Config, watched: &Watched, up: bool, error: Option<String>) -> Report {
    let (subject, what, next) = if up {
        (
            "levee: replication to the replica site recovered",
            "Replication to the replica site is connected again.",
            "Nothing; the replica catches up on its own. `levee status` shows the lag.",
        )
    } else {
        (
            "levee: replication to the replica site is down",
            "levee cannot stream its journal to the replica site.",
            "Mail keeps flowing through the primary and stays in levee's journal, but a failover \
             now would leave the replica without the newest mail. Check the replica daemon \
             (`levee replica`) and the network between the sites.",
        )
    };
    Report {
        id: format!(
            "levee-alert-{}-link-{}@{}",
            config.node.id,
            now_ms(),
            config.smtp.hostname
        ),
        subject: subject.into(),
        text: format!(
            "What happened: {what}\r\n\r\nLast error: {}\r\n\r\nReplication: {}.\r\n\r\n\
             What to do next: {next}\r\n",
            error.unwrap_or_else(|| "none".into()),
            lag(watched)
        ),
    }
}

/// The report as an RFC 5322 message (CRLF line ends).
fn message(from: &str, alerts: &Alerts, report: &Report) -> Vec<u8> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    format!(
        "Date: {date}\r\nFrom: levee <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Message-ID: <{id}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{text}",
        to = alerts.to.join(", "),
        subject = report.subject,
        id = report.id,
        text = report.text,
    )
    .into_bytes()
}

async fn send(config: &Config, alerts: &Alerts, watched: &Watched, report: Report) {
    let from = alerts
        .from
        .clone()
        .unwrap_or_else(|| format!("levee@{}", config.smtp.hostname));
    let body = message(&from, alerts, &report);
    let record = NewRecord {
        time_ms: now_ms(),
        kind: RecordKind::Message(MessageRecord {
            mail_from: from,
            rcpt_to: alerts.to.clone(),
            client: ClientInfo {
                listener: "alerts".into(),
                ..ClientInfo::default()
            },
            message_id: Some(report.id.clone()),
            body,
        }),
    };
    match watched.journal.append(record).await {
        Ok(appended) => {
            tracing::info!(seq = appended.seq, subject = %report.subject, "alert journaled for the admins");
            // No session delivers it: hand it to the delivery worker, due now.
            let mut state = DeliveryState::pending(now_ms());
            state.status = DeliveryStatus::Deferred;
            state.last_reply = Some("alert for the admins".into());
            if let Err(err) = watched.journal.set_state(appended.seq, &state) {
                tracing::error!(%err, seq = appended.seq, "cannot queue an alert for delivery");
            }
            watched.wake.notify_one();
        }
        Err(err) => tracing::error!(%err, subject = %report.subject, "cannot journal an alert"),
    }
}
