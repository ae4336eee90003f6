//! Shared setup of the replication protocol's integration tests: certificates, journals,
//! a receiver on loopback, shipper settings, a hand-driven primary and a TCP relay that
//! can cut or freeze the link.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_journal::{
    AuditRecord, ClientInfo, Journal, JournalOptions, MessageRecord, NewRecord, Record, RecordKind,
};
use levee_replica::auth::Token;
use levee_replica::conn::{ConnError, FrameConn};
use levee_replica::frame::{Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use levee_replica::receiver::{self, ReceiverSettings};
use levee_replica::shipper::{ShipperSettings, ShipperStatus};
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod relay;
#[allow(unused_imports)]
pub use relay::Relay;

pub const SERVER_NAME: &str = "replica.test";
pub const TOKEN: &str = "0123456789abcdef-replication-secret";
/// Every wait of these tests is bounded by this unless said otherwise.
pub const LIMIT: Duration = Duration::from_secs(8);
pub const T0: u64 = 1_709_294_400_000;

/// Certificates and the token, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A self-signed client certificate, also used as its own CA by the receiver.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another self-signed certificate for the replica's name: a CA the replica's
    /// certificate does not chain to, and a client certificate the receiver does not trust.
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
    pub token_file: PathBuf,
}

fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join(format!("{stem}-cert.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_key) = self_signed(dir.path(), "server", &[SERVER_NAME]);
    let (client_cert, client_key) = self_signed(dir.path(), "client", &["primary.test"]);
    let (other_cert, other_key) = self_signed(dir.path(), "other", &[SERVER_NAME]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    Pki {
        dir,
        server_cert,
        server_key,
        client_cert,
        client_key,
        other_cert,
        other_key,
        token_file,
    }
}

impl Pki {
    pub fn token(&self) -> Token {
        Token::from_file(&self.token_file).unwrap()
    }

    /// A token file with other contents.
    pub fn other_token(&self, text: &str) -> Token {
        let path = self.dir.path().join("other-token");
        std::fs::write(&path, text).unwrap();
        Token::from_file(&path).unwrap()
    }

    pub fn server_tls(&self, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
        let config =
            levee_replica::tls::server_config(&self.server_cert, &self.server_key, client_ca)
                .unwrap();
        Arc::new(config)
    }

    /// Trusts the replica's certificate; presents `client` when given.
    pub fn client_tls(&self, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        Arc::new(levee_replica::tls::client_config(&self.server_cert, client).unwrap())
    }
}

pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

pub fn open_journal(dir: &Path) -> Journal {
    Journal::open(dir, JournalOptions::default()).unwrap()
}

/// Opens `dir`, retrying while the previous handle's last clones are still being dropped.
pub async fn reopen_journal(dir: &Path) -> Journal {
    let deadline = Instant::now() + LIMIT;
    loop {
        match Journal::open(dir, JournalOptions::default()) {
            Ok(journal) => return journal,
            Err(err) if Instant::now() > deadline => panic!("reopen {}: {err}", dir.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Deterministic noise (xorshift), incompressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Record number `i` of a mixed workload: small messages, audits, an empty body, 4-16 KiB
/// text, and every 25th a 200 KiB incompressible body. `tag` changes every record's content
/// (to build a journal that diverges from another).
pub fn record(i: u64, tag: &str) -> NewRecord {
    let body = match i % 25 {
        0 => noise(i, 200 * 1024),
        7 | 14 => format!("Subject: {tag} {i}\r\n\r\n")
            .into_bytes()
            .into_iter()
            .chain(
                format!("line {i} of {tag}\r\n")
                    .repeat(200 + (i as usize % 7) * 100)
                    .into_bytes(),
            )
            .collect(),
        11 => Vec::new(),
        19 => {
            return NewRecord {
                time_ms: T0 + i,
                kind: RecordKind::Audit(AuditRecord {
                    actor: "officer@example.org".into(),
                    action: "export".into(),
                    detail: format!("{tag} {i}"),
                }),
            };
        }
        _ => format!("Subject: {tag} {i}\r\n\r\nbody {i}\r\n").into_bytes(),
    };
    NewRecord {
        time_ms: T0 + i,
        kind: RecordKind::Message(MessageRecord {
            mail_from: format!("sender{i}@example.org"),
            rcpt_to: vec!["rcpt@example.net".into(), format!("other{i}@example.net")],
            client: ClientInfo {
                addr: Some("192.0.2.7:40000".into()),
                helo: Some("mx.example.net".into()),
                authenticated_user: None,
                listener: "relay".into(),
                tls: i.is_multiple_of(2),
            },
            message_id: Some(format!("<{tag}{i}@example.org>")),
            body,
        }),
    }
}

/// Appends records `from..from + n` of the workload (concurrently, so group commit
/// batches the syncs; seqs are then in completion order, which does not matter here).
pub async fn fill(journal: &Journal, from: u64, n: u64, tag: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..from + n {
        let (journal, rec) = (journal.clone(), record(i, tag));
        tasks.spawn(async move { journal.append(rec).await.unwrap() });
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Records `from..=to` of `journal`.
pub fn records(journal: &Journal, from: u64, to: u64) -> Vec<Record> {
    let got = journal.read_from(from, (to + 1 - from) as usize).unwrap();
    assert_eq!(got.len() as u64, to + 1 - from);
    got
}

/// The replica holds exactly the primary's journal, record for record, and both verify.
pub fn assert_same(primary: &Journal, replica: &Journal) {
    assert_eq!(replica.tip(), primary.tip(), "head and last chain");
    let mut seq = 1;
    while seq <= primary.head() {
        let a = primary.read_from(seq, 64).unwrap();
        let b = replica.read_from(seq, 64).unwrap();
        assert_eq!(a.len(), b.len(), "records from {seq}");
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a, b, "record {}", a.seq);
        }
        seq += a.len() as u64;
    }
    assert_intact(primary);
    assert_intact(replica);
}

pub fn assert_intact(journal: &Journal) {
    let report = journal.verify().unwrap();
    assert!(report.is_intact(), "{:?}", report.first_broken);
    // `report.head`, not `journal.head()`: a receiver may commit while we walk.
    assert_eq!(report.records_checked, report.head);
}

/// Polls `cond` every 10 ms; panics with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the shipper reports an error containing `needle`; returns it.
pub async fn wait_error(status: &ShipperStatus, needle: &str) -> String {
    let mut last = None;
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        last = status.current().last_error;
        if last.as_deref().is_some_and(|e| e.contains(needle)) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no shipper error containing {needle:?}; last: {last:?}");
}

/// A receiver on 127.0.0.1 with its own journal.
pub struct Replica {
    pub addr: SocketAddr,
    pub journal: Journal,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub dir: TempDir,
}

/// How the receiver authenticates primaries.
pub struct ReplicaAuth<'a> {
    pub token: Option<Token>,
    pub client_ca: Option<&'a Path>,
    pub idle_timeout: Duration,
    pub applied: Option<levee_replica::receiver::AppliedFn>,
}

impl<'a> ReplicaAuth<'a> {
    pub fn token(pki: &Pki) -> ReplicaAuth<'a> {
        ReplicaAuth {
            token: Some(pki.token()),
            client_ca: None,
            idle_timeout: Duration::from_secs(5),
            applied: None,
        }
    }
}

pub async fn start_replica(pki: &Pki, auth: ReplicaAuth<'_>) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir.path().join("journal"));
    serve_replica(pki, auth, journal, dir).await
}

/// Serves an existing journal (kept in `dir`).
pub async fn serve_replica(
    pki: &Pki,
    auth: ReplicaAuth<'_>,
    journal: Journal,
    dir: TempDir,
) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ReceiverSettings {
        node: "replica-1".into(),
        tls: pki.server_tls(auth.client_ca),
        token: auth.token,
        idle_timeout: auth.idle_timeout,
        applied: auth.applied,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(receiver::serve(
        listener,
        journal.clone(),
        settings,
        shutdown.clone(),
    ));
    Replica {
        addr,
        journal,
        shutdown,
        task,
        dir,
    }
}

impl Replica {
    /// Stops the receiver and reopens its journal from disk.
    pub async fn stop_and_reopen(self) -> (Journal, TempDir) {
        self.shutdown.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .unwrap()
            .unwrap();
        drop(self.journal);
        let journal = reopen_journal(&self.dir.path().join("journal")).await;
        (journal, self.dir)
    }
}

/// Shipper settings for `pki`'s replica at `addr`: 256 KiB batches, window 4, 100 ms
/// heartbeats (so a silent peer is dropped after 500 ms).
pub fn shipper_settings(pki: &Pki, addr: SocketAddr, epoch: u64) -> ShipperSettings {
    ShipperSettings {
        node: "primary-1".into(),
        epoch,
        replica: addr,
        server_name: server_name(SERVER_NAME),
        tls: pki.client_tls(None),
        token: Some(pki.token()),
        batch_bytes: 256 * 1024,
        window: 4,
        heartbeat: Duration::from_millis(100),
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP + TLS to `addr` as `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        LIMIT,
        tokio_rustls::TlsConnector::from(config).connect(server_name(name), tcp),
    )
    .await
    .expect("TLS handshake hangs")
}

/// A hand-driven primary with a good TLS setup (no client certificate).
pub async fn hand(pki: &Pki, addr: SocketAddr) -> FrameConn<Tls> {
    FrameConn::new(
        tls_connect(addr, pki.client_tls(None), SERVER_NAME)
            .await
            .unwrap(),
    )
}

pub fn hello(epoch: u64, token: &[u8]) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        node: "hand-primary".into(),
        epoch,
        token: token.to_vec(),
    }
}

/// Sends `hello`, returns the answer.
pub async fn greet(conn: &mut FrameConn<Tls>, hello: &Frame) -> Result<Frame, ConnError> {
    conn.send(hello).await?;
    conn.recv(LIMIT).await
}

/// A hand-driven primary that has been welcomed; returns the connection and the Welcome.
pub async fn welcomed(pki: &Pki, addr: SocketAddr, epoch: u64) -> (FrameConn<Tls>, Frame) {
    let mut conn = hand(pki, addr).await;
    let welcome = greet(&mut conn, &hello(epoch, TOKEN.as_bytes()))
        .await
        .unwrap();
    assert!(matches!(welcome, Frame::Welcome { .. }), "{welcome:?}");
    (conn, welcome)
}

/// The reason of a Refused frame, or a panic naming what came instead.
pub fn refused(frame: Result<Frame, ConnError>) -> String {
    match frame {
        Ok(Frame::Refused { reason }) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// The receiver must close the session: the next read is an end of stream or an error,
/// never a frame, and it comes well before our own limit.
pub async fn expect_closed(conn: &mut FrameConn<Tls>) {
    match conn.recv(LIMIT).await {
        Err(ConnError::Closed) | Err(ConnError::Io(_)) => {}
        other => panic!("expected the receiver to close the session, got {other:?}"),
    }
}
