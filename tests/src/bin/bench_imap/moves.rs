//! After the kill: every session's client followed until it read the `EXISTS` levee passes
//! on once the session is rebuilt at the replica, or its connection closed; then until
//! each has seen the mail delivered after the move.
//!
//! A client that is told `BYE`, `NO` or `BAD` on the way is counted (with what it was
//! told) and followed on: levee may still move its session.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use levee_tests::imap_load::{self, ImapClient, show};
use levee_tests::load::HttpClient;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Longest wait for every one of `n` sessions to move, or to see the new message: a
/// minute, and 6 ms more per session.
fn patience(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(6 * n as u64)
}

/// What a session's reader saw.
#[derive(Debug)]
pub(crate) struct Event {
    session: usize,
    at: Instant,
    seen: Result<Vec<u8>, String>,
}

/// Reads a session's responses until it fails, reporting each.
pub(crate) async fn watch(
    session: usize,
    mut client: ImapClient,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let seen = client.response().await.map_err(|e| e.to_string());
        let failed = seen.is_err();
        let event = Event {
            session,
            at: Instant::now(),
            seen,
        };
        if events.send(event).is_err() || failed {
            return;
        }
    }
}

/// Feeds the events of sessions in `alive` to `take` until it returned true for each;
/// returns the time of the event that completed each.
pub(crate) fn until_each(
    rt: &Runtime,
    events: &mut mpsc::UnboundedReceiver<Event>,
    alive: &HashSet<usize>,
    what: &str,
    mut take: impl FnMut(usize, &[u8]) -> bool,
) -> Result<Vec<Instant>> {
    let patience = patience(alive.len());
    let deadline = Instant::now() + patience;
    let mut done: HashMap<usize, Instant> = HashMap::new();
    while done.len() < alive.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) =
            rt.block_on(async { tokio::time::timeout(left, events.recv()).await })
        else {
            bail!(
                "{} of {} sessions {what} after {patience:?}",
                done.len(),
                alive.len()
            );
        };
        if !alive.contains(&event.session) {
            continue;
        }
        let response = match event.seen {
            Ok(response) => response,
            Err(err) => bail!("session {}: connection lost ({err})", event.session),
        };
        if imap_load::is_error(&response) {
            bail!("session {} saw {}", event.session, show(&response));
        }
        if !done.contains_key(&event.session) && take(event.session, &response) {
            done.insert(event.session, event.at);
        }
    }
    Ok(done.into_values().collect())
}

/// How the sessions fared after the kill.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    /// When each moved session's client read its `EXISTS`.
    pub moved: HashMap<usize, Instant>,
    /// The first `BYE`, `NO` or `BAD` each session was told before its `EXISTS`, whether
    /// it moved afterwards or not.
    pub told: HashMap<usize, String>,
    /// Sessions whose connection closed before their `EXISTS`, and how.
    pub closed: HashMap<usize, String>,
    /// The migration counter's last value, and when it got there (from the kill).
    pub metric: (f64, Duration),
}

impl Moves {
    /// Sessions told `BYE`, `NO` or `BAD` that moved all the same.
    pub(crate) fn told_then_moved(&self) -> usize {
        self.told
            .keys()
            .filter(|s| self.moved.contains_key(s))
            .count()
    }

    /// From `since` until the first, the median and the last client read its `EXISTS`.
    pub(crate) fn client_times(&self, since: Instant) -> [Duration; 3] {
        let mut times: Vec<Duration> = self.moved.values().map(|t| *t - since).collect();
        times.sort();
        let at = |i: usize| times.get(i).copied().unwrap_or_default();
        [
            at(0),
            at(times.len() / 2),
            at(times.len().saturating_sub(1)),
        ]
    }
}

/// Watches events and the migration counter until every session has moved or closed,
/// and the counter agrees with the moves.
pub(crate) fn follow_moves(
    events: &mut mpsc::UnboundedReceiver<Event>,
    http: &mut HttpClient,
    killed: Instant,
    n: usize,
) -> Result<Moves> {
    let mut m = Moves::default();
    loop {
        while let Ok(event) = events.try_recv() {
            let s = event.session;
            if m.moved.contains_key(&s) || m.closed.contains_key(&s) {
                continue;
            }
            match event.seen {
                Ok(r) if imap_load::is_error(&r) => {
                    m.told.entry(s).or_insert_with(|| show(&r));
                }
                Ok(r) if imap_load::exists(&r).is_some() => {
                    m.moved.insert(s, event.at);
                }
                Ok(_) => {}
                Err(err) => {
                    m.closed.insert(s, err);
                }
            }
        }
        let count = http.metric("levee_imap_migrations_total")?.unwrap_or(0.0);
        if count != m.metric.0 {
            m.metric = (count, killed.elapsed());
        }
        if m.moved.len() + m.closed.len() >= n && count >= m.moved.len() as f64 {
            return Ok(m);
        }
        ensure!(
            killed.elapsed() < patience(n),
            "after {:?}: {} sessions moved, {} closed, of {n}; the metric says {count}",
            patience(n),
            m.moved.len(),
            m.closed.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the sessions in `seen` saw, the commonest first, with how many saw it (three at
/// most), and the first session that saw the commonest.
pub(crate) fn reasons(seen: &HashMap<usize, String>) -> Option<String> {
    let mut by: HashMap<&str, (usize, usize)> = HashMap::new();
    for (session, why) in seen {
        let e = by.entry(why.as_str()).or_insert((0, *session));
        e.0 += 1;
        e.1 = e.1.min(*session);
    }
    let mut listed: Vec<(&str, (usize, usize))> = by.into_iter().collect();
    listed.sort_by_key(|(why, (count, _))| (std::cmp::Reverse(*count), *why));
    let (_, (_, first)) = listed.first()?;
    let text: Vec<String> = listed
        .iter()
        .take(3)
        .map(|(why, (count, _))| format!("{count} x `{why}`"))
        .collect();
    Some(format!("{} (first: session {first})", text.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_commonest_first() {
        let seen: HashMap<usize, String> = [(7, "b"), (3, "a"), (5, "b"), (9, "c")]
            .into_iter()
            .map(|(s, w)| (s, w.to_string()))
            .collect();
        assert_eq!(
            reasons(&seen).unwrap(),
            "2 x `b`, 1 x `a`, 1 x `c` (first: session 5)"
        );
        assert!(reasons(&HashMap::new()).is_none());
    }
}
