//! A byte flipped on the wire between the real `levee run` and `levee replica`: the replica
//! refuses what it received and reports it, nothing altered reaches either journal or the
//! standby mailbox, and the stream recovers on its own.
//!
//! The link is TLS, so the flip is caught by the record layer before any frame is decoded;
//! a batch whose records were altered *inside* an authentic stream (hash and chain checks)
//! is covered by `replica/tests/hostile.rs`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use levee_tests::{LeveeMode, ReplicaSite, Site, message_file, tail};

/// Where in the primary-to-replica byte stream the flip lands: past the TLS handshake and
/// the Hello, inside the first record batches.
const FLIP_AT: usize = 6_000;

/// A TCP relay that flips one byte of the primary-to-replica direction, once.
struct FlippingRelay {
    addr: SocketAddr,
    flipped: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl FlippingRelay {
    fn start(target: SocketAddr) -> FlippingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let flipped = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (flipped.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let flag = flag.clone();
                std::thread::spawn(move || pump(client, server, Some(flag)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        FlippingRelay {
            addr,
            flipped,
            connections,
        }
    }
}

/// Copies `from` to `to`; with `flip`, inverts the byte at [`FLIP_AT`] unless some
/// connection already had its byte flipped.
fn pump(mut from: TcpStream, mut to: TcpStream, flip: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 16 * 1024];
    let mut offset = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(flag) = &flip
            && (offset..offset + n).contains(&FLIP_AT)
            && !flag.swap(true, Ordering::SeqCst)
        {
            buf[FLIP_AT - offset] ^= 0x20;
        }
        offset += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A message of about 3 KiB of text that compresses poorly enough to fill batches.
fn message(id: &str) -> Vec<u8> {
    let mut body = format!(
        "From: sender@example.org\r\nTo: alice@example.test\r\nSubject: tamper {id}\r\nMessage-ID: <{id}>\r\n\r\n"
    );
    let mut x: u64 = id.bytes().fold(1469598103934665603, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    for _ in 0..48 {
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push_str(&format!("{:08x}", x as u32));
        }
        body.push_str("\r\n");
    }
    body.into_bytes()
}

#[test]
fn flipped_byte_on_the_link_is_refused_reported_and_the_stream_recovers() {
    let mut replica = ReplicaSite::start("replica-tamper", LeveeMode::Child);
    let relay = FlippingRelay::start(replica.link.addr);
    let mut link = replica.link.clone();
    link.addr = relay.addr;
    let mut primary = Site::start_with(
        "primary-tamper",
        LeveeMode::Child,
        &link.primary_section("async", "2s"),
    );

    let ids: Vec<String> = (0..30).map(|i| format!("tamper-{i}@example.org")).collect();
    let mut sent = Vec::new();
    for id in &ids {
        let body = message(id);
        let file = message_file(primary.dir.path(), &format!("{id}.eml"), &body);
        let verdict = levee_tests::clients::smtp_send(
            primary.levee.ports.relay,
            levee_tests::clients::Security::Plain,
            None,
            "sender@example.org",
            &["alice@example.test"],
            &file,
        );
        assert_eq!(verdict["code"], 250, "{verdict}");
        sent.push(body);
    }

    let fetched = replica.wait_for_messages("alice", &ids, 60);
    assert!(
        relay.flipped.load(Ordering::SeqCst),
        "the stream never reached {FLIP_AT} bytes: the test proved nothing"
    );
    assert!(
        relay.connections.load(Ordering::SeqCst) >= 2,
        "the primary never reconnected after the flip"
    );
    let context = || {
        format!(
            "replica log:\n{}\nprimary log:\n{}",
            tail(&replica.daemon.log(), 20),
            tail(&primary.levee.log(), 20)
        )
    };
    let refused = replica
        .daemon
        .metric("levee_replica_session_errors_total")
        .unwrap_or(0.0);
    assert!(
        refused >= 1.0,
        "the replica did not report the bad session\n{}",
        context()
    );
    assert!(
        primary
            .levee
            .metric("levee_replication_session_errors_total")
            .unwrap_or(0.0)
            >= 1.0,
        "the primary did not report the broken session\n{}",
        context()
    );

    // Exactly once each, and byte-identical below the trace headers.
    assert_eq!(fetched.len(), ids.len(), "duplicates at the replica");
    for (id, body) in ids.iter().zip(&sent) {
        assert!(
            fetched.iter().any(|m| m.ends_with(body)),
            "{id} altered or missing at the replica"
        );
    }

    // Let the stream settle, then compare the journals record by record.
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary.levee.status()["replication"]["lag_records"] != 0 {
        assert!(Instant::now() < deadline, "replica never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    primary.levee.stop();
    replica.daemon.stop();
    let source = primary.open_journal();
    let copy = replica.open_journal();
    assert_eq!(copy.head(), source.head());
    assert_eq!(
        source.read_from(1, usize::MAX).unwrap(),
        copy.read_from(1, usize::MAX).unwrap(),
        "the replica journal is not a byte-identical copy"
    );
    assert!(source.verify().unwrap().first_broken.is_none());
    assert!(copy.verify().unwrap().first_broken.is_none());
}
