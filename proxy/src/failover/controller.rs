//! Which backend is active: a pure state machine fed with events, with no IO and no clock
//! of its own (every event carries its time), so that every rule can be tested with a
//! script of events.
//!
//! Rules:
//! - Automatic failover goes one way only, primary to replica, after `failures` consecutive
//!   failed health checks of the primary (an upstream error seen by a session counts as
//!   one), and only when the replica's last check passed.
//! - Hold-down: no automatic transition within `hold_down` of the previous one, so a
//!   flapping primary cannot bounce clients back and forth; a failover that is due waits
//!   for the hold-down to end.
//! - Failback is an admin's decision (after the primary has been resynced); so is a planned
//!   switchover. An admin may not switch to a backend whose last check failed unless
//!   forced.
//! - Every transition bumps the epoch, which fences the side left behind.

use std::time::Duration;

/// One of the two backend sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Primary,
    Replica,
}

impl Backend {
    pub fn other(self) -> Backend {
        match self {
            Backend::Primary => Backend::Replica,
            Backend::Replica => Backend::Primary,
        }
    }
}

/// Milliseconds on a monotonic clock chosen by the driver.
pub type Millis = u64;

#[derive(Debug, Clone)]
pub enum Event {
    /// A health check of `backend` ended.
    Probe {
        backend: Backend,
        ok: bool,
        at: Millis,
    },
    /// A session lost its connection to `backend` (a hint; counts as a failed check).
    UpstreamError { backend: Backend, at: Millis },
    /// An admin asks for `to` to become active.
    Admin {
        to: Backend,
        reason: String,
        force: bool,
        at: Millis,
    },
}

/// Why a transition happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Automatic: the primary failed this many checks in a row.
    PrimaryFailed { failures: u32 },
    /// Asked for by an admin.
    Admin(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Backend,
    pub to: Backend,
    pub epoch: u64,
    pub reason: Reason,
    pub at: Millis,
}

/// Why an admin request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0:?} is already active")]
    AlreadyActive(Backend),
    #[error("{0:?} failed its last health check (use force to switch anyway)")]
    Unhealthy(Backend),
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Consecutive failed checks of the primary before failover.
    pub failures: u32,
    /// Shortest time between two automatic transitions (or after an admin's).
    pub hold_down: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Consecutive failures (0 after a success).
    failures: u32,
    /// The last check's verdict; unknown until the first.
    last_ok: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Controller {
    settings: Settings,
    active: Backend,
    epoch: u64,
    primary: Health,
    replica: Health,
    last_transition: Option<Millis>,
}

impl Controller {
    pub fn new(settings: Settings, active: Backend, epoch: u64) -> Controller {
        Controller {
            settings,
            active,
            epoch,
            primary: Health::default(),
            replica: Health::default(),
            last_transition: None,
        }
    }

    pub fn active(&self) -> Backend {
        self.active
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last check's verdict for `backend` (`None` before the first).
    pub fn healthy(&self, backend: Backend) -> Option<bool> {
        self.health(backend).last_ok
    }

    fn health(&self, backend: Backend) -> &Health {
        match backend {
            Backend::Primary => &self.primary,
            Backend::Replica => &self.replica,
        }
    }

    fn health_mut(&mut self, backend: Backend) -> &mut Health {
        match backend {
            Backend::Primary => &mut self.primary,
            Backend::Replica => &mut self.replica,
        }
    }

    /// Feeds one event; returns the transition it caused, if any. An admin request that
    /// cannot be honoured is an error and changes nothing.
    pub fn handle(&mut self, event: Event) -> Result<Option<Transition>, Refusal> {
        match event {
            Event::Probe { backend, ok, at } => {
                let health = self.health_mut(backend);
                health.last_ok = Some(ok);
                health.failures = if ok { 0 } else { health.failures + 1 };
                Ok(self.automatic(at))
            }
            Event::UpstreamError { backend, at } => {
                let health = self.health_mut(backend);
                health.failures += 1;
                health.last_ok = Some(false);
                Ok(self.automatic(at))
            }
            Event::Admin {
                to,
                reason,
                force,
                at,
            } => {
                if to == self.active {
                    return Err(Refusal::AlreadyActive(to));
                }
                if !force && self.health(to).last_ok == Some(false) {
                    return Err(Refusal::Unhealthy(to));
                }
                Ok(Some(self.switch(to, Reason::Admin(reason), at)))
            }
        }
    }

    /// Whether a failover is due now; called on every event (a due failover held back by
    /// the hold-down happens at the first event after it ends).
    pub fn tick(&mut self, at: Millis) -> Option<Transition> {
        self.automatic(at)
    }

    fn automatic(&mut self, at: Millis) -> Option<Transition> {
        let failures = self.primary.failures;
        let due = self.active == Backend::Primary
            && failures >= self.settings.failures
            && self.replica.last_ok == Some(true);
        let held = self
            .last_transition
            .is_some_and(|last| at < last + self.settings.hold_down.as_millis() as u64);
        (due && !held)
            .then(|| self.switch(Backend::Replica, Reason::PrimaryFailed { failures }, at))
    }

    fn switch(&mut self, to: Backend, reason: Reason, at: Millis) -> Transition {
        let from = self.active;
        self.active = to;
        self.epoch += 1;
        self.last_transition = Some(at);
        Transition {
            from,
            to,
            epoch: self.epoch,
            reason,
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Controller {
        Controller::new(
            Settings {
                failures: 3,
                hold_down: Duration::from_secs(30),
            },
            Backend::Primary,
            1,
        )
    }

    fn probe(c: &mut Controller, backend: Backend, ok: bool, at: Millis) -> Option<Transition> {
        c.handle(Event::Probe { backend, ok, at }).unwrap()
    }

    #[test]
    fn fails_over_after_n_consecutive_failures_only() {
        let mut c = controller();
        assert!(probe(&mut c, Backend::Replica, true, 0).is_none());
        assert!(probe(&mut c, Backend::Primary, false, 100).is_none());
        assert!(probe(&mut c, Backend::Primary, false, 200).is_none());
        // A success in between starts the count again.
        assert!(probe(&mut c, Backend::Primary, true, 300).is_none());
        assert!(probe(&mut c, Backend::Primary, false, 400).is_none());
        assert!(probe(&mut c, Backend::Primary, false, 500).is_none());
        let t = probe(&mut c, Backend::Primary, false, 600).expect("failover");
        assert_eq!(
            (t.from, t.to, t.epoch),
            (Backend::Primary, Backend::Replica, 2)
        );
        assert_eq!(t.reason, Reason::PrimaryFailed { failures: 3 });
        assert_eq!(c.active(), Backend::Replica);
    }

    #[test]
    fn upstream_errors_count_and_a_dead_replica_is_no_target() {
        let mut c = controller();
        for at in [10, 20, 30, 40] {
            assert!(
                c.handle(Event::UpstreamError {
                    backend: Backend::Primary,
                    at
                })
                .unwrap()
                .is_none(),
                "no failover before the replica is known to be healthy"
            );
        }
        assert!(probe(&mut c, Backend::Replica, false, 50).is_none());
        let t = probe(&mut c, Backend::Replica, true, 60).expect("replica now healthy");
        assert_eq!(t.reason, Reason::PrimaryFailed { failures: 4 });
    }

    #[test]
    fn never_fails_back_by_itself_and_holds_down_after_a_switch() {
        let mut c = controller();
        probe(&mut c, Backend::Replica, true, 0);
        let back = c
            .handle(Event::Admin {
                to: Backend::Replica,
                reason: "planned".into(),
                force: false,
                at: 1_000,
            })
            .unwrap()
            .unwrap();
        assert_eq!(back.epoch, 2);
        // The replica failing does not bring the primary back: that is an admin's call.
        for at in [2_000, 3_000, 4_000, 5_000] {
            assert!(probe(&mut c, Backend::Replica, false, at).is_none());
        }
        assert_eq!(c.active(), Backend::Replica);
        let failback = c
            .handle(Event::Admin {
                to: Backend::Primary,
                reason: "primary resynced".into(),
                force: false,
                at: 6_000,
            })
            .unwrap()
            .unwrap();
        assert_eq!((failback.to, failback.epoch), (Backend::Primary, 3));
        // The primary flaps right after the failback: failover waits out the hold-down.
        for at in [7_000, 8_000, 9_000, 10_000] {
            probe(&mut c, Backend::Replica, true, at);
            assert!(
                probe(&mut c, Backend::Primary, false, at).is_none(),
                "at {at}"
            );
        }
        assert!(c.tick(35_999).is_none());
        let t = c.tick(36_000).expect("due failover after the hold-down");
        assert_eq!((t.to, t.epoch), (Backend::Replica, 4));
    }

    #[test]
    fn admin_requests_are_checked() {
        let mut c = controller();
        let refused = c.handle(Event::Admin {
            to: Backend::Primary,
            reason: String::new(),
            force: false,
            at: 0,
        });
        assert_eq!(refused, Err(Refusal::AlreadyActive(Backend::Primary)));
        probe(&mut c, Backend::Replica, false, 1);
        let refused = c.handle(Event::Admin {
            to: Backend::Replica,
            reason: "test".into(),
            force: false,
            at: 2,
        });
        assert_eq!(refused, Err(Refusal::Unhealthy(Backend::Replica)));
        assert_eq!(
            (c.active(), c.epoch()),
            (Backend::Primary, 1),
            "nothing changed"
        );
        let forced = c
            .handle(Event::Admin {
                to: Backend::Replica,
                reason: "forced".into(),
                force: true,
                at: 3,
            })
            .unwrap()
            .unwrap();
        assert_eq!(forced.reason, Reason::Admin("forced".into()));
    }
}
