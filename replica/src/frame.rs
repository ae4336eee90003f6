//! The replication protocol's frames and their wire form. No IO here: `encode` and
//! `decode` are pure, so they are unit-tested on hostile input and fuzzable.
//!
//! # Wire form
//! Each frame travels as `u32be length || flags || payload` (the length prefix is
//! tokio-util's `LengthDelimitedCodec`). `flags` bit 0 says the payload is zstd-compressed;
//! the payload is the postcard encoding of [`Frame`]. Compression is used where it pays
//! (payloads of at least 1 KiB that shrink by a tenth or more).
//!
//! # Versions
//! `Frame::Hello` is variant 0 and begins with `version` and `min_version`, and this never
//! changes: any future peer can read an old peer's Hello and refuse it with a clear reason
//! instead of misreading the rest of the stream.
//!
//! Protocol 2 adds [`Frame::Applied`]: a replica sends it only to a primary whose Hello
//! says version 2 or later, so a version-1 primary never sees a variant it cannot read.

use levee_journal::{Record, Seq};
use serde::{Deserialize, Serialize};

/// The protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol this build accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest frame accepted (before and after decompression): a batch holds at least one
/// record, and a record may be as large as the largest message levee accepts.
pub const MAX_FRAME_BYTES: usize = 96 * 1024 * 1024;

const FLAG_ZSTD: u8 = 1;
const COMPRESS_FROM: usize = 1024;

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Primary to replica, first frame: who is streaming, and proof that it may.
    Hello {
        version: u16,
        min_version: u16,
        node: String,
        epoch: u64,
        /// Shared secret (empty when the peer authenticates with a client certificate).
        token: Vec<u8>,
    },
    /// Replica to primary: accepted; stream from `last_durable + 1`.
    Welcome {
        version: u16,
        node: String,
        epoch: u64,
        last_durable: Seq,
        /// Chain hash of `last_durable` (zeros when empty), so the primary can check that
        /// the replica holds a prefix of its own journal before streaming.
        last_chain: [u8; 32],
    },
    /// Either side: the session is refused or broken, and why. The connection closes.
    Refused { reason: String },
    /// Primary to replica: consecutive records.
    Records { records: Vec<Record> },
    /// Replica to primary: everything up to `seq` is durable at the replica.
    Ack { seq: Seq },
    /// Either side, when idle: liveness, and the sender's journal head.
    Heartbeat { time_ms: u64, head: Seq },
    /// Replica to primary (protocol 2): every record up to `seq` has been applied to the
    /// standby mail server (or parked there with a reason). Sent whenever it moves.
    Applied { seq: Seq },
}

/// The first protocol version with [`Frame::Applied`].
pub const APPLIED_SINCE: u16 = 2;

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame flags {0:#04x}")]
    Flags(u8),
    #[error("frame larger than {MAX_FRAME_BYTES} bytes")]
    TooLarge,
    #[error("compressed frame is corrupt: {0}")]
    Compression(String),
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// The wire form of `frame` (without the length prefix).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_stdvec(frame).map_err(|e| FrameError::Decode(e.to_string()))?;
    if payload.len() >= COMPRESS_FROM
        && let Ok(compressed) = zstd::bulk::compress(&payload, 1)
        && compressed.len() + compressed.len() / 10 < payload.len()
    {
        let mut out = Vec::with_capacity(compressed.len() + 1);
        out.push(FLAG_ZSTD);
        out.extend_from_slice(&compressed);
        return check_size(out);
    }
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(0);
    out.extend_from_slice(&payload);
    check_size(out)
}

fn check_size(out: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    if out.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge);
    }
    Ok(out)
}

/// Parses the wire form of one frame.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let (&flags, payload) = bytes.split_first().ok_or(FrameError::Empty)?;
    let inflated;
    let payload = match flags {
        0 => payload,
        FLAG_ZSTD => {
            inflated = zstd::bulk::decompress(payload, MAX_FRAME_BYTES)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            &inflated
        }
        other => return Err(FrameError::Flags(other)),
    };
    let (frame, rest) = postcard::take_from_bytes::<Frame>(payload)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the frame",
            rest.len()
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_journal::{ClientInfo, MessageRecord, RecordKind};

    fn record(seq: Seq, body: &[u8]) -> Record {
        Record {
            seq,
            time_ms: 1_700_000_000_000 + seq,
            kind: RecordKind::Message(MessageRecord {
                mail_from: "a@example.org".into(),
                rcpt_to: vec!["b@example.test".into()],
                client: ClientInfo {
                    addr: Some("127.0.0.1:1".into()),
                    helo: None,
                    authenticated_user: None,
                    listener: "relay@127.0.0.1:25".into(),
                    tls: false,
                },
                message_id: Some(format!("m{seq}@x")),
                body: body.to_vec(),
            }),
            body_sha256: [seq as u8; 32],
            prev_chain: [0; 32],
            chain: [1; 32],
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Hello {
                version: PROTOCOL_VERSION,
                min_version: MIN_PROTOCOL_VERSION,
                node: "primary".into(),
                epoch: 3,
                token: b"secret".to_vec(),
            },
            Frame::Welcome {
                version: 1,
                node: "replica".into(),
                epoch: 3,
                last_durable: 42,
                last_chain: [9; 32],
            },
            Frame::Refused {
                reason: "no".into(),
            },
            Frame::Records {
                records: vec![record(1, b"small"), record(2, &[b'x'; 50_000])],
            },
            Frame::Ack { seq: 2 },
            Frame::Heartbeat {
                time_ms: 5,
                head: 2,
            },
            Frame::Applied { seq: 2 },
        ];
        for frame in frames {
            assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
        }
    }

    #[test]
    fn large_repetitive_batches_are_compressed() {
        let frame = Frame::Records {
            records: vec![record(1, &[b'x'; 50_000])],
        };
        let wire = encode(&frame).unwrap();
        assert_eq!(wire[0], FLAG_ZSTD);
        assert!(wire.len() < 5_000, "{}", wire.len());
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(FrameError::Empty));
        assert_eq!(decode(&[7, 1, 2]), Err(FrameError::Flags(7)));
        assert!(matches!(
            decode(&[0, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            decode(&[1, 1, 2, 3, 4]),
            Err(FrameError::Compression(_))
        ));
        let mut wire = encode(&Frame::Ack { seq: 7 }).unwrap();
        wire.push(0);
        assert!(matches!(decode(&wire), Err(FrameError::Decode(_))));
        // Every truncation of a real frame fails cleanly.
        let wire = encode(&Frame::Records {
            records: vec![record(1, b"body")],
        })
        .unwrap();
        for len in 0..wire.len() {
            assert!(decode(&wire[..len]).is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn hello_layout_is_stable_for_future_peers() {
        // Variant 0, then version and min_version as varints: what a future peer reads first.
        let wire = encode(&Frame::Hello {
            version: 1,
            min_version: 1,
            node: String::new(),
            epoch: 0,
            token: Vec::new(),
        })
        .unwrap();
        assert_eq!(&wire[..4], &[0, 0, 1, 1]);
    }
}
