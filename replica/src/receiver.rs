//! The receiver: the replica site's end of the stream, inside `levee replica`.
//!
//! A primary must present a supported protocol version, a valid token or client
//! certificate, and an epoch no older than the newest this replica has seen (an older one
//! is a fenced primary). Each batch is checked record by record (consecutive seqs, body
//! hash, hash chain) and written all-or-nothing into the replica's own journal; the ack is
//! sent only after that write is durable. One primary streams at a time.
//!
//! A replica that applies its journal to a standby mail server also reports how far that
//! has got ([`Frame::Applied`], to primaries of protocol 2 or later), so that a planned
//! switchover can wait until the standby holds every message, not only the journal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use levee_journal::{Journal, JournalError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Token;
use crate::conn::{ConnError, FrameConn};
use crate::frame::{APPLIED_SINCE, Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::metrics as m;

/// Journal meta key holding the newest epoch seen (big-endian u64).
pub const EPOCH_KEY: &str = "replication_epoch";

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub node: String,
    pub tls: Arc<rustls::ServerConfig>,
    /// Required unless the TLS config demands client certificates.
    pub token: Option<Token>,
    pub idle_timeout: Duration,
    /// How far the standby has applied the journal, when this replica applies it.
    pub applied: Option<AppliedFn>,
}

/// Reads the highest seq through which every record has been applied.
pub type AppliedFn = fn(&Journal) -> levee_journal::Seq;

/// How often the applied seq is looked at while a primary streams.
const APPLIED_EVERY: Duration = Duration::from_millis(50);

/// Why a primary's session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Conn(#[from] ConnError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("batch rejected: {0}")]
    Rejected(String),
    #[error("journal: {0}")]
    Journal(JournalError),
}

/// Accepts primaries on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    journal: Journal,
    settings: ReceiverSettings,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(settings.tls.clone());
    let settings = Arc::new(settings);
    // One writer at a time: a second primary waits for the first to go away.
    let writer = Arc::new(Mutex::new(()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let span = tracing::info_span!("replication", %peer, proto = "replication");
        let (journal, settings, acceptor, writer) = (
            journal.clone(),
            settings.clone(),
            acceptor.clone(),
            writer.clone(),
        );
        let stop = shutdown.clone();
        tokio::spawn(
            async move {
                let session = session(stream, peer, &journal, &settings, &acceptor, &writer);
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = session => result,
                };
                match result {
                    Ok(()) => tracing::info!("primary disconnected"),
                    Err(err) => {
                        metrics::counter!(m::RECV_SESSION_ERRORS).increment(1);
                        tracing::warn!(%err, "replication session ended");
                    }
                }
            }
            .instrument(span),
        );
    }
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    journal: &Journal,
    settings: &ReceiverSettings,
    acceptor: &TlsAcceptor,
    writer: &Mutex<()>,
) -> Result<(), ReceiveError> {
    let _ = stream.set_nodelay(true);
    let tls = tokio::time::timeout(settings.idle_timeout, acceptor.accept(stream))
        .await
        .map_err(|_| ReceiveError::Tls(std::io::ErrorKind::TimedOut.into()))?
        .map_err(ReceiveError::Tls)?;
    let mut conn = FrameConn::new(tls);
    let hello = conn.recv(settings.idle_timeout).await?;
    if let Err(reason) = admit(&hello, journal, settings) {
        metrics::counter!(m::RECV_REFUSED).increment(1);
        tracing::warn!(%peer, %reason, "primary refused");
        let _ = conn
            .send(&Frame::Refused {
                reason: reason.clone(),
            })
            .await;
        return Err(ReceiveError::Refused(reason));
    }
    // A raised epoch must survive a crash, or a fenced primary could come back.
    journal.flush().await.map_err(ReceiveError::Journal)?;
    // Only one primary writes; another waits a bounded time, then is told why.
    let Ok(_writing) = tokio::time::timeout(settings.idle_timeout, writer.lock()).await else {
        let reason = "another primary is streaming to this replica".to_string();
        let _ = conn
            .send(&Frame::Refused {
                reason: reason.clone(),
            })
            .await;
        return Err(ReceiveError::Refused(reason));
    };
    let session_epoch = match &hello {
        Frame::Hello { epoch, .. } => *epoch,
        _ => 0,
    };
    let (last_durable, last_chain) = journal.tip();
    conn.send(&Frame::Welcome {
        version: PROTOCOL_VERSION,
        node: settings.node.clone(),
        epoch: stored_epoch(journal),
        last_durable,
        last_chain,
    })
    .await?;
    tracing::info!(from = journal.head() + 1, "primary streaming");
    let peer_version = match &hello {
        Frame::Hello { version, .. } => *version,
        _ => 0,
    };
    let applied = settings.applied.filter(|_| peer_version >= APPLIED_SINCE);
    let mut applied_sent = None;
    let mut applied_tick = tokio::time::interval(APPLIED_EVERY);
    applied_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let silence = (last_heard + settings.idle_timeout)
            .saturating_duration_since(tokio::time::Instant::now());
        let frame = tokio::select! {
            frame = conn.recv(silence) => frame,
            _ = applied_tick.tick(), if applied.is_some() => {
                let seq = applied.map_or(0, |read| read(journal));
                if applied_sent != Some(seq) {
                    conn.send(&Frame::Applied { seq }).await?;
                    applied_sent = Some(seq);
                }
                continue;
            }
        };
        last_heard = tokio::time::Instant::now();
        // A newer primary was admitted meanwhile: this one is fenced from now on.
        let newest = stored_epoch(journal);
        if newest > session_epoch {
            let reason = format!("fenced: epoch {session_epoch} is older than {newest}");
            metrics::counter!(m::RECV_REFUSED).increment(1);
            let _ = conn
                .send(&Frame::Refused {
                    reason: reason.clone(),
                })
                .await;
            return Err(ReceiveError::Refused(reason));
        }
        match frame {
            Ok(Frame::Records { records }) => {
                let count = records.len() as u64;
                match journal.append_replicated(records).await {
                    Ok(head) => {
                        metrics::counter!(m::RECV_RECORDS).increment(count);
                        metrics::gauge!(m::RECV_HEAD).set(head as f64);
                        conn.send(&Frame::Ack { seq: head }).await?;
                    }
                    Err(JournalError::Mismatch { seq, reason }) => {
                        metrics::counter!(m::RECV_REJECTED).increment(1);
                        let reason = format!("record {seq}: {reason}");
                        tracing::error!(%reason, "batch rejected; nothing of it was written");
                        let _ = conn
                            .send(&Frame::Refused {
                                reason: reason.clone(),
                            })
                            .await;
                        return Err(ReceiveError::Rejected(reason));
                    }
                    Err(err) => {
                        let _ = conn
                            .send(&Frame::Refused {
                                reason: format!("replica journal: {err}"),
                            })
                            .await;
                        return Err(ReceiveError::Journal(err));
                    }
                }
            }
            Ok(Frame::Heartbeat { .. }) => {
                conn.send(&Frame::Heartbeat {
                    time_ms: 0,
                    head: journal.head(),
                })
                .await?;
            }
            Ok(other) => {
                let reason = format!("unexpected frame {}", frame_name(&other));
                let _ = conn
                    .send(&Frame::Refused {
                        reason: reason.clone(),
                    })
                    .await;
                return Err(ReceiveError::Refused(reason));
            }
            Err(ConnError::Closed) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Checks the Hello; `Err(reason)` refuses the primary.
fn admit(hello: &Frame, journal: &Journal, settings: &ReceiverSettings) -> Result<(), String> {
    let Frame::Hello {
        version,
        min_version,
        epoch,
        token,
        node,
    } = hello
    else {
        return Err(format!("expected Hello, got {}", frame_name(hello)));
    };
    if *min_version > PROTOCOL_VERSION || *version < MIN_PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {min_version}..={version} not supported; this replica speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        ));
    }
    if let Some(expected) = &settings.token
        && !expected.matches(token)
    {
        return Err("authentication failed".into());
    }
    let seen = stored_epoch(journal);
    if *epoch < seen {
        return Err(format!(
            "primary {node} has epoch {epoch}, older than {seen}: it is fenced"
        ));
    }
    if *epoch > seen
        && let Err(err) = journal.set_meta(EPOCH_KEY, &epoch.to_be_bytes())
    {
        return Err(format!("replica journal: {err}"));
    }
    Ok(())
}

/// The newest epoch this node's journal has recorded (0 if none): at the replica, the
/// newest a primary presented; at the primary, the one its failover driver is at.
pub fn stored_epoch(journal: &Journal) -> u64 {
    journal
        .get_meta(EPOCH_KEY)
        .ok()
        .flatten()
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello { .. } => "Hello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Refused { .. } => "Refused",
        Frame::Records { .. } => "Records",
        Frame::Ack { .. } => "Ack",
        Frame::Heartbeat { .. } => "Heartbeat",
        Frame::Applied { .. } => "Applied",
    }
}
