//! The driver around [`Controller`]: checks both sites every `failover.probe_interval`,
//! takes session errors and admin requests, and publishes the active backend on a `watch`
//! channel that every session reads.

use std::sync::Arc;

use levee_config::Config;
use levee_journal::Journal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::controller::{Backend, Controller, Event, Refusal, Settings, Transition};
use super::probe;
use crate::metrics as m;

/// What sessions route to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Active {
    pub backend: Backend,
    pub epoch: u64,
}

/// The latest view of both sites, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Health {
    pub primary_ok: Option<bool>,
    pub replica_ok: Option<bool>,
    pub primary_error: Option<String>,
    pub replica_error: Option<String>,
    pub last_transition: Option<String>,
    /// The last transition was an admin's (switchover, failback), not automatic.
    pub last_by_admin: bool,
}

enum Request {
    UpstreamError(Backend),
    Admin {
        to: Backend,
        reason: String,
        force: bool,
        reply: oneshot::Sender<Result<Active, Refusal>>,
    },
}

/// A handle on the running driver; cheap to clone.
#[derive(Debug, Clone)]
pub struct Failover {
    /// True while an admin's switch makes the new site ready: new SMTP transactions wait
    /// at MAIL FROM so that the site switched to can catch up with everything acknowledged.
    draining: Arc<watch::Sender<bool>>,
    active: watch::Receiver<Active>,
    health: watch::Receiver<Health>,
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::UpstreamError(b) => write!(f, "UpstreamError({b:?})"),
            Request::Admin { to, .. } => write!(f, "Admin({to:?})"),
        }
    }
}

impl Failover {
    /// Starts checking both sites, at the epoch `journal` recorded; `None` when no replica
    /// site is configured.
    pub fn start(
        config: Arc<Config>,
        journal: Journal,
        shutdown: CancellationToken,
    ) -> Option<Failover> {
        config.upstream.replica.as_ref()?;
        let (backend, epoch) = super::epoch::at_start(&journal);
        if backend == Backend::Replica {
            tracing::warn!(
                epoch,
                "starting on the replica site, as recorded before the stop"
            );
        }
        let start = Active { backend, epoch };
        let (active_tx, active) = watch::channel(start);
        let (health_tx, health) = watch::channel(Health::default());
        let (requests, rx) = mpsc::unbounded_channel();
        metrics::gauge!(m::ACTIVE_BACKEND).set(match backend {
            Backend::Primary => 0.0,
            Backend::Replica => 1.0,
        });
        metrics::gauge!(m::EPOCH).set(epoch as f64);
        tokio::spawn(drive(
            config, journal, start, rx, active_tx, health_tx, shutdown,
        ));
        Some(Failover {
            draining: Arc::new(watch::channel(false).0),
            active,
            health,
            requests,
        })
    }

    /// The active backend now; `changed()` on the receiver wakes on every transition.
    pub fn watch(&self) -> watch::Receiver<Active> {
        self.active.clone()
    }

    pub fn active(&self) -> Active {
        *self.active.borrow()
    }

    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Whether new SMTP transactions wait for an admin's switch.
    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.send_replace(on);
    }

    /// Waits until no switch is under way, at most `limit`; false if one still is.
    pub async fn wait_drained(&self, limit: std::time::Duration) -> bool {
        let mut draining = self.draining.subscribe();
        tokio::time::timeout(limit, draining.wait_for(|on| !on))
            .await
            .is_ok()
    }

    /// A session lost its connection to `backend`.
    pub fn upstream_error(&self, backend: Backend) {
        let _ = self.requests.send(Request::UpstreamError(backend));
    }

    /// An admin's switchover or failback.
    pub async fn switch(
        &self,
        to: Backend,
        reason: String,
        force: bool,
    ) -> Result<Active, Refusal> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Admin {
            to,
            reason,
            force,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(Refusal::AlreadyActive(self.active().backend));
        }
        answer
            .await
            .unwrap_or(Err(Refusal::AlreadyActive(self.active().backend)))
    }
}

async fn drive(
    config: Arc<Config>,
    journal: Journal,
    start: Active,
    mut requests: mpsc::UnboundedReceiver<Request>,
    active: watch::Sender<Active>,
    health: watch::Sender<Health>,
    shutdown: CancellationToken,
) {
    let settings = &config.failover;
    let mut controller = Controller::new(
        Settings {
            failures: settings.failures,
            hold_down: settings.hold_down,
        },
        start.backend,
        start.epoch,
    );
    let Some(replica) = config.upstream.replica.clone() else {
        return;
    };
    let primary = config.upstream.primary.clone();
    let origin = Instant::now();
    let now = move || origin.elapsed().as_millis() as u64;
    let mut tick = tokio::time::interval(settings.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = settings.probe_timeout.min(settings.probe_interval * 4);
    loop {
        let transition = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let (p, r) = tokio::join!(
                    probe::check_site(&primary, limit),
                    probe::check_site(&replica, limit)
                );
                health.send_modify(|h| {
                    h.primary_ok = Some(p.is_ok());
                    h.replica_ok = Some(r.is_ok());
                    h.primary_error = p.as_ref().err().cloned();
                    h.replica_error = r.as_ref().err().cloned();
                });
                if let Err(err) = &p {
                    tracing::debug!(%err, "primary check failed");
                }
                let at = now();
                let first = controller
                    .handle(Event::Probe { backend: Backend::Primary, ok: p.is_ok(), at })
                    .ok()
                    .flatten();
                let second = controller
                    .handle(Event::Probe { backend: Backend::Replica, ok: r.is_ok(), at })
                    .ok()
                    .flatten();
                first.or(second).or_else(|| controller.tick(at))
            }
            request = requests.recv() => match request {
                None => return,
                Some(Request::UpstreamError(backend)) => controller
                    .handle(Event::UpstreamError { backend, at: now() })
                    .ok()
                    .flatten(),
                Some(Request::Admin { to, reason, force, reply }) => {
                    match controller.handle(Event::Admin { to, reason, force, at: now() }) {
                        Ok(transition) => {
                            let _ = reply.send(Ok(Active { backend: to, epoch: controller.epoch() }));
                            transition
                        }
                        Err(refusal) => {
                            tracing::warn!(%refusal, "switch request refused");
                            let _ = reply.send(Err(refusal));
                            None
                        }
                    }
                }
            },
        };
        if let Some(transition) = transition {
            super::epoch::record(&journal, &transition).await;
            publish(&transition, &active, &health);
        }
    }
}

fn publish(
    transition: &Transition,
    active: &watch::Sender<Active>,
    health: &watch::Sender<Health>,
) {
    tracing::warn!(
        from = ?transition.from,
        to = ?transition.to,
        epoch = transition.epoch,
        reason = ?transition.reason,
        "active backend changed"
    );
    metrics::counter!(m::FAILOVER_TRANSITIONS).increment(1);
    metrics::gauge!(m::ACTIVE_BACKEND).set(match transition.to {
        Backend::Primary => 0.0,
        Backend::Replica => 1.0,
    });
    metrics::gauge!(m::EPOCH).set(transition.epoch as f64);
    health.send_modify(|h| {
        h.last_transition = Some(format!(
            "{:?} -> {:?} (epoch {}): {:?}",
            transition.from, transition.to, transition.epoch, transition.reason
        ));
        h.last_by_admin = matches!(transition.reason, super::controller::Reason::Admin(_));
    });
    active.send_replace(Active {
        backend: transition.to,
        epoch: transition.epoch,
    });
}
