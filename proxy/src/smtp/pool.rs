//! Idle upstream sessions kept for the next client.
//!
//! A client session that ends cleanly (QUIT or a plain close, no open transaction, no
//! AUTH, no error reply from the upstream) hands its greeted upstream connection back
//! here, and the next client session to the same upstream takes it over with XCLIENT,
//! which Postfix answers as if a new client had just connected (fresh 220, EHLO again,
//! the new client's address). That saves the upstream a TCP accept, a greeting and the
//! per-connection work of its SMTP server for every message sent over a new connection.
//!
//! Only upstreams that accept XCLIENT are pooled, because only XCLIENT gives a
//! well-defined reset of the upstream's idea of the client. A session that did anything
//! an upstream might remember for the rest of the connection is closed instead. Idle
//! sessions are closed after `smtp.upstream_idle`, and a connection serves at most
//! [`MAX_USES`] client sessions so that no per-connection counter at the upstream can
//! grow without bound.
//!
//! Sessions are kept per upstream address, so a client only ever takes over a session to
//! the server it would have dialled. After a change of the active backend the pool keeps
//! only the new backend's addresses ([`UpstreamPool::keep_only`]): idle sessions to the
//! site that was left are closed, and sessions to it are not taken back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::upstream::{ClientIdentity, Upstream, UpstreamError};
use crate::metrics as m;

/// Client sessions one upstream connection serves before it is closed. Postfix counts
/// some commands per connection (XCLIENT and EHLO among its "junk" commands, limit 100
/// by default); two per session stays well below that.
pub const MAX_USES: u32 = 32;

/// Greeted upstream connections waiting for their next client session.
#[derive(Debug)]
pub struct UpstreamPool {
    state: Mutex<State>,
    /// Most idle connections kept per upstream address; 0 turns pooling off.
    max_idle: usize,
    idle_for: Duration,
}

#[derive(Debug, Default)]
struct State {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    /// The only addresses sessions are kept for; any, until [`UpstreamPool::keep_only`].
    allowed: Option<Vec<SocketAddr>>,
}

#[derive(Debug)]
struct Idle {
    upstream: Upstream,
    since: Instant,
}

impl UpstreamPool {
    pub fn new(max_idle: usize, idle_for: Duration) -> Self {
        UpstreamPool {
            state: Mutex::new(State::default()),
            max_idle,
            idle_for,
        }
    }

    /// An upstream session for `client`: a pooled one handed over with XCLIENT when one
    /// is idle and still answers, else a new connection.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
        our_name: &str,
        client: &ClientIdentity,
    ) -> Result<Upstream, UpstreamError> {
        if client.addr.is_some() && client.login.is_none() {
            while let Some(mut upstream) = self.take(addr) {
                match upstream.hand_over(client).await {
                    Ok(true) => {
                        metrics::counter!(m::UPSTREAM_REUSED).increment(1);
                        return Ok(upstream);
                    }
                    Ok(false) => {}
                    // Closed by the upstream while idle: try the next one, then dial.
                    Err(err) => tracing::debug!(%err, "pooled upstream session was stale"),
                }
            }
        }
        Upstream::connect(addr, connect_timeout, reply_timeout, our_name, client).await
    }

    /// Takes back a session whose client is done with it; one that may not be reused is
    /// closed.
    pub fn put(&self, upstream: Upstream) {
        if self.max_idle == 0 || !upstream.reusable(MAX_USES) {
            return;
        }
        let mut state = self.lock();
        let addr = upstream.addr();
        if state.allowed.as_ref().is_some_and(|a| !a.contains(&addr)) {
            return;
        }
        let queue = state.idle.entry(addr).or_default();
        if queue.len() < self.max_idle {
            queue.push(Idle {
                upstream,
                since: Instant::now(),
            });
        }
    }

    /// The most recently returned live session for `addr` (the likeliest to be alive).
    fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut state = self.lock();
        let queue = state.idle.get_mut(&addr)?;
        while let Some(entry) = queue.pop() {
            if entry.since.elapsed() < self.idle_for {
                return Some(entry.upstream);
            }
        }
        None
    }

    /// Closes sessions idle for longer than `smtp.upstream_idle` (all of them when `all`);
    /// returns how many.
    pub fn sweep(&self, all: bool) -> usize {
        let expired: Vec<Upstream> = {
            let mut state = self.lock();
            let mut expired = Vec::new();
            for queue in state.idle.values_mut() {
                let (old, fresh): (Vec<Idle>, Vec<Idle>) = std::mem::take(queue)
                    .into_iter()
                    .partition(|entry| all || entry.since.elapsed() >= self.idle_for);
                *queue = fresh;
                expired.extend(old.into_iter().map(|entry| entry.upstream));
            }
            state.idle.retain(|_, queue| !queue.is_empty());
            expired
        };
        close(expired)
    }

    /// From now on keeps sessions to `addrs` only; closes the idle ones to any other
    /// address and returns how many.
    pub fn keep_only(&self, addrs: &[SocketAddr]) -> usize {
        let left: Vec<Upstream> = {
            let mut state = self.lock();
            state.allowed = Some(addrs.to_vec());
            let others: Vec<SocketAddr> = (state.idle.keys())
                .filter(|addr| !addrs.contains(addr))
                .copied()
                .collect();
            others
                .into_iter()
                .filter_map(|addr| state.idle.remove(&addr))
                .flatten()
                .map(|entry| entry.upstream)
                .collect()
        };
        close(left)
    }

    /// Sessions idle now, across all upstreams.
    pub fn idle_count(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often [`UpstreamPool::sweep`] should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_for / 2).max(Duration::from_millis(100))
    }
}

/// Ends `sessions` politely in the background; returns how many.
fn close(sessions: Vec<Upstream>) -> usize {
    let count = sessions.len();
    for upstream in sessions {
        tokio::spawn(upstream.quit());
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A Postfix-like upstream: greets, offers XCLIENT, answers XCLIENT with a new 220
    /// and refuses RCPT to `nobody@`.
    async fn fake_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = match line.split(' ').next().unwrap_or("") {
                            "EHLO" => b"250-fake\r\n250 XCLIENT ADDR PORT HELO\r\n",
                            "XCLIENT" => b"220 fake ESMTP\r\n",
                            "RCPT" if line.contains("nobody@") => b"550 5.1.1 unknown\r\n",
                            "QUIT" => b"221 bye\r\n",
                            _ => b"250 ok\r\n",
                        };
                        if write.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client() -> ClientIdentity {
        ClientIdentity {
            addr: Some("192.0.2.1:1000".parse().unwrap()),
            helo: None,
            login: None,
        }
    }

    async fn checkout(pool: &UpstreamPool, addr: SocketAddr) -> Upstream {
        let limit = Duration::from_secs(5);
        let mut upstream = pool
            .checkout(addr, limit, limit, "levee.test", &client())
            .await
            .unwrap();
        upstream.hello("client.test").await.unwrap();
        upstream
    }

    #[tokio::test]
    async fn clean_sessions_are_handed_on_and_expire_when_idle() {
        let addr = fake_upstream().await;
        let pool = UpstreamPool::new(4, Duration::from_millis(200));
        let upstream = checkout(&pool, addr).await;
        let local = upstream.local_addr();
        pool.put(upstream);
        assert_eq!(pool.idle_count(), 1);

        let upstream = checkout(&pool, addr).await;
        assert_eq!(
            upstream.local_addr(),
            local,
            "the same connection was reused"
        );
        assert_eq!(pool.idle_count(), 0);
        pool.put(upstream);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(pool.sweep(false), 1);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn refused_or_authenticated_or_worn_sessions_are_closed() {
        let addr = fake_upstream().await;
        let pool = UpstreamPool::new(4, Duration::from_secs(60));

        let mut refused = checkout(&pool, addr).await;
        refused.command(b"MAIL FROM:<a@b>\r\n").await.unwrap();
        let verdict = refused.command(b"RCPT TO:<nobody@b>\r\n").await.unwrap();
        assert_eq!(verdict.code(), 550);
        pool.put(refused);
        assert_eq!(
            pool.idle_count(),
            0,
            "a session that saw a refusal was kept"
        );

        let mut authenticated = checkout(&pool, addr).await;
        authenticated.forbid_reuse();
        pool.put(authenticated);
        assert_eq!(pool.idle_count(), 0, "an authenticated session was kept");

        let mut upstream = checkout(&pool, addr).await;
        for _ in 1..MAX_USES - 1 {
            pool.put(upstream);
            upstream = checkout(&pool, addr).await;
        }
        pool.put(upstream);
        assert_eq!(pool.idle_count(), 1);
        let worn = checkout(&pool, addr).await;
        pool.put(worn);
        assert_eq!(
            pool.idle_count(),
            0,
            "a connection served more than MAX_USES"
        );
    }

    #[tokio::test]
    async fn sessions_of_a_backend_that_was_left_are_closed_and_not_taken_back() {
        let (primary, replica) = (fake_upstream().await, fake_upstream().await);
        let pool = UpstreamPool::new(4, Duration::from_secs(60));
        let to_primary = checkout(&pool, primary).await;
        pool.put(to_primary);
        let to_replica = checkout(&pool, replica).await;
        let replica_local = to_replica.local_addr();
        pool.put(to_replica);
        assert_eq!(pool.idle_count(), 2);

        assert_eq!(pool.keep_only(&[replica]), 1, "the primary's idle session");
        assert_eq!(pool.idle_count(), 1);
        let again = checkout(&pool, replica).await;
        assert_eq!(again.local_addr(), replica_local, "the replica's was kept");
        let late = checkout(&pool, primary).await;
        pool.put(late);
        assert_eq!(
            pool.idle_count(),
            0,
            "a session to the primary was taken back"
        );
        pool.put(again);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn pooling_off_keeps_nothing() {
        let addr = fake_upstream().await;
        let pool = UpstreamPool::new(0, Duration::from_secs(60));
        let upstream = checkout(&pool, addr).await;
        pool.put(upstream);
        assert_eq!(pool.idle_count(), 0);
    }
}
