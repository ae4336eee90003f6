//! The shipper: runs inside `levee run` and streams the journal to the replica site.
//!
//! It tails the journal by sequence number (never through sled subscriptions, which would
//! let a slow replica block every writer), keeps at most `window` batches unacknowledged,
//! and reconnects with backoff after any failure, resuming from what the replica says it
//! holds durably. Before streaming it checks that the replica's last record has the same
//! chain hash as ours: a replica that diverged is refused, never overwritten.
//!
//! SMTP never waits for the shipper in async mode; in sync mode a session waits on
//! [`ShipperStatus::wait_acked`], which is bounded by the caller.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_journal::{Journal, Seq};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::auth::Token;
use crate::conn::{ConnError, FrameConn};
use crate::frame::{Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::metrics as m;

/// What the shipper needs to know.
#[derive(Debug, Clone)]
pub struct ShipperSettings {
    pub node: String,
    /// The lowest epoch to present; the journal's recorded epoch wins when newer (a
    /// failover moves it on).
    pub epoch: u64,
    pub replica: SocketAddr,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: Option<Token>,
    pub batch_bytes: usize,
    pub window: usize,
    pub heartbeat: Duration,
}

/// Where the stream stands, for sync mode, metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// Highest seq the replica has acknowledged as durable.
    pub acked: Seq,
    /// Highest seq through which the replica's standby mail server holds every record;
    /// `None` while the replica has not said (one that does not apply, or protocol 1).
    pub applied: Option<Seq>,
    /// Why the last session ended, if one did.
    pub last_error: Option<String>,
}

/// Read side of the shipper's state.
#[derive(Debug, Clone)]
pub struct ShipperStatus {
    state: watch::Receiver<LinkState>,
}

impl ShipperStatus {
    pub fn current(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// Returns when the replica has `seq` durably, or `false` after `limit`.
    pub async fn wait_acked(&self, seq: Seq, limit: Duration) -> bool {
        let mut state = self.state.clone();
        let waited = tokio::time::timeout(limit, state.wait_for(|s| s.acked >= seq)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Returns when the replica's standby has applied `seq`, or `false` after `limit`.
    pub async fn wait_applied(&self, seq: Seq, limit: Duration) -> bool {
        let mut state = self.state.clone();
        let applied = |s: &LinkState| s.applied.is_some_and(|a| a >= seq);
        let waited = tokio::time::timeout(limit, state.wait_for(applied)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// Why a streaming session ended.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("replica {addr}: connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("replica {addr}: TLS: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("replica: {0}")]
    Conn(#[from] ConnError),
    #[error("replica refused the stream: {0}")]
    Refused(String),
    #[error("replica diverged: {0}")]
    Diverged(String),
    #[error("replica sent an unexpected frame: {0}")]
    Protocol(String),
    #[error("journal: {0}")]
    Journal(#[from] levee_journal::JournalError),
}

/// Starts the shipper task; it runs until `shutdown`.
pub fn spawn(
    journal: Journal,
    settings: ShipperSettings,
    shutdown: CancellationToken,
) -> ShipperStatus {
    let (tx, rx) = watch::channel(LinkState::default());
    metrics::gauge!(m::SHIP_CONNECTED).set(0.0);
    tokio::spawn(report_lag(
        journal.clone(),
        rx.clone(),
        settings.heartbeat,
        shutdown.clone(),
    ));
    tokio::spawn(run(journal, settings, tx, shutdown));
    ShipperStatus { state: rx }
}

async fn run(
    journal: Journal,
    settings: ShipperSettings,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = stream_once(&journal, &settings, &state) => result,
        };
        let err = match session {
            Ok(()) => return,
            Err(err) => err,
        };
        metrics::counter!(m::SHIP_SESSION_ERRORS).increment(1);
        tracing::warn!(%err, retry_in = ?backoff, "replication stream interrupted");
        state.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(err.to_string());
        });
        metrics::gauge!(m::SHIP_CONNECTED).set(0.0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if matches!(err, ShipError::Conn(_) | ShipError::Connect { .. }) && state.borrow().acked > 0
        {
            // A link that worked before comes back fast more often than not.
            backoff = backoff.min(Duration::from_secs(1));
        }
    }
}

/// One connection: handshake, then stream until something breaks.
async fn stream_once(
    journal: &Journal,
    settings: &ShipperSettings,
    state: &watch::Sender<LinkState>,
) -> Result<(), ShipError> {
    let addr = settings.replica;
    let silence = settings.heartbeat * 5;
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let tcp = tokio::time::timeout(silence, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())
        .and_then(|connected| connected)
        .map_err(|source| ShipError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let handshake =
        TlsConnector::from(settings.tls.clone()).connect(settings.server_name.clone(), tcp);
    let tls = tokio::time::timeout(silence, handshake)
        .await
        .map_err(|_| timed_out())
        .and_then(|handshake| handshake)
        .map_err(|source| ShipError::Tls { addr, source })?;
    let mut conn = FrameConn::new(tls);
    conn.send(&Frame::Hello {
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        node: settings.node.clone(),
        epoch: settings.epoch.max(crate::receiver::stored_epoch(journal)),
        token: settings
            .token
            .as_ref()
            .map(|t| t.bytes().to_vec())
            .unwrap_or_default(),
    })
    .await?;
    let (mut next, replica_node) = match conn.recv(silence).await? {
        Frame::Welcome {
            last_durable,
            last_chain,
            node,
            ..
        } => {
            check_prefix(journal, last_durable, &last_chain)?;
            (last_durable + 1, node)
        }
        Frame::Refused { reason } => return Err(ShipError::Refused(reason)),
        other => {
            return Err(ShipError::Protocol(
                format!("{other:?}").chars().take(80).collect(),
            ));
        }
    };
    tracing::info!(replica = %replica_node, from = next, "replication stream established");
    state.send_modify(|s| {
        s.connected = true;
        s.acked = s.acked.max(next - 1);
    });
    metrics::gauge!(m::SHIP_CONNECTED).set(1.0);
    metrics::gauge!(m::SHIP_ACKED).set((next - 1) as f64);

    let mut head = journal.watch_head();
    let mut in_flight: VecDeque<Seq> = VecDeque::new();
    let mut ticker = tokio::time::interval(settings.heartbeat);
    // A replica that stops answering (frozen, or a black-holed link) is dropped after
    // `silence`, however often we send to it.
    let mut last_heard = tokio::time::Instant::now();
    loop {
        while in_flight.len() < settings.window && next <= journal.head() {
            let records = batch(journal, next, settings.batch_bytes)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            let count = records.len();
            send(&mut conn, &Frame::Records { records }, silence).await?;
            metrics::counter!(m::SHIP_RECORDS).increment(count as u64);
            in_flight.push_back(last);
            next = last + 1;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(last_heard + silence) => {
                return Err(ShipError::Conn(ConnError::Timeout(silence)));
            }
            frame = conn.recv(silence) => match frame? {
                Frame::Ack { seq } => {
                    last_heard = tokio::time::Instant::now();
                    while in_flight.front().is_some_and(|&s| s <= seq) {
                        in_flight.pop_front();
                    }
                    state.send_modify(|s| s.acked = s.acked.max(seq));
                    metrics::gauge!(m::SHIP_ACKED).set(seq as f64);
                    metrics::gauge!(m::SHIP_LAG_RECORDS).set(journal.head().saturating_sub(seq) as f64);
                }
                Frame::Heartbeat { .. } => last_heard = tokio::time::Instant::now(),
                Frame::Applied { seq } => {
                    last_heard = tokio::time::Instant::now();
                    state.send_modify(|s| s.applied = Some(s.applied.map_or(seq, |a| a.max(seq))));
                    metrics::gauge!(m::SHIP_APPLIED).set(seq as f64);
                }
                Frame::Refused { reason } => return Err(ShipError::Refused(reason)),
                other => return Err(ShipError::Protocol(format!("{other:?}").chars().take(80).collect())),
            },
            changed = head.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = ticker.tick() => {
                let heartbeat = Frame::Heartbeat { time_ms: now_ms(), head: journal.head() };
                send(&mut conn, &heartbeat, silence).await?;
            }
        }
    }
}

/// Sends one frame, giving up after `limit` (a peer that stopped reading).
async fn send<S>(conn: &mut FrameConn<S>, frame: &Frame, limit: Duration) -> Result<(), ShipError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, conn.send(frame)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(ShipError::Conn(ConnError::Timeout(limit))),
    }
}

/// Keeps the lag gauges current whether or not the link is up: an outage is exactly when
/// someone needs to see the lag grow.
async fn report_lag(
    journal: Journal,
    state: watch::Receiver<LinkState>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let acked = state.borrow().acked;
        metrics::gauge!(m::SHIP_LAG_SECONDS).set(lag_seconds(&journal, acked));
        metrics::gauge!(m::SHIP_LAG_RECORDS).set(journal.head().saturating_sub(acked) as f64);
    }
}

/// Age in seconds of the oldest record the replica does not hold yet (0 when caught up).
pub fn lag_seconds(journal: &Journal, acked: Seq) -> f64 {
    if acked >= journal.head() {
        return 0.0;
    }
    match journal.get(acked + 1) {
        Ok(Some(record)) => now_ms().saturating_sub(record.time_ms) as f64 / 1000.0,
        _ => 0.0,
    }
}

/// Records from `from` on, up to about `max_bytes` (at least one record).
fn batch(
    journal: &Journal,
    from: Seq,
    max_bytes: usize,
) -> Result<Vec<levee_journal::Record>, ShipError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut seq = from;
    while bytes < max_bytes {
        let chunk = journal.read_from(seq, 64)?;
        if chunk.is_empty() {
            break;
        }
        for record in chunk {
            let size = record.kind.body().len() + 256;
            if !out.is_empty() && bytes + size > max_bytes {
                return Ok(out);
            }
            bytes += size;
            seq = record.seq + 1;
            out.push(record);
        }
    }
    Ok(out)
}

/// The replica must hold a prefix of our journal: same chain hash at its last seq.
fn check_prefix(journal: &Journal, last: Seq, chain: &[u8; 32]) -> Result<(), ShipError> {
    if last == 0 {
        return Ok(());
    }
    match journal.get(last)? {
        Some(record) if &record.chain == chain => Ok(()),
        Some(_) => Err(ShipError::Diverged(format!(
            "record {last} differs between primary and replica"
        ))),
        None => Err(ShipError::Diverged(format!(
            "replica holds record {last} but this journal ends at {}",
            journal.head()
        ))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
