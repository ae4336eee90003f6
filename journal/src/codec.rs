//! On-disk form of a record: `[format version][postcard(StoredRecord)]`.
//!
//! The body is kept apart from the header so indexes can be rebuilt and the
//! chain re-checked without touching (or decompressing) large bodies, and so
//! the body can be zstd-compressed when that actually pays.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::JournalError;
use crate::record::{RecordKind, Seq, canonical_bytes, chain_hash, sha256};
use crate::{NewRecord, Record};

/// The only format written today. Unknown versions are reported as corrupt
/// rather than guessed at.
pub(crate) const FORMAT_V1: u8 = 1;

/// zstd level: 1 keeps compression well below disk latency on the append path.
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BodyEncoding {
    Raw,
    Zstd,
}

/// Serialized view, borrowing the header and the (possibly compressed) body.
#[derive(Serialize)]
struct StoredRef<'a> {
    seq: Seq,
    time_ms: u64,
    header: &'a RecordKind,
    encoding: BodyEncoding,
    body_len: u64,
    #[serde(serialize_with = "ser_bytes")]
    body: &'a [u8],
    body_sha256: [u8; 32],
    prev_chain: [u8; 32],
    chain: [u8; 32],
}

/// Decoded stored record; `header` has an empty body.
#[derive(Debug, Deserialize)]
pub(crate) struct Stored {
    pub seq: Seq,
    pub time_ms: u64,
    pub header: RecordKind,
    pub encoding: BodyEncoding,
    pub body_len: u64,
    #[serde(deserialize_with = "de_bytes")]
    pub body: Vec<u8>,
    pub body_sha256: [u8; 32],
    pub prev_chain: [u8; 32],
    pub chain: [u8; 32],
}

/// A record with its body hashed and encoded, waiting for a seq.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub time_ms: u64,
    pub header: RecordKind,
    pub encoding: BodyEncoding,
    pub body_len: u64,
    pub body: Vec<u8>,
    pub body_sha256: [u8; 32],
}

/// Hashes and (maybe) compresses outside the append lock.
pub(crate) fn prepare(rec: NewRecord, compress_min_bytes: usize) -> Prepared {
    let mut header = rec.kind;
    let raw = header.take_body();
    let body_sha256 = sha256(&raw);
    let body_len = raw.len() as u64;
    let (encoding, body) = choose_encoding(raw, compress_min_bytes);
    Prepared {
        time_ms: rec.time_ms,
        header,
        encoding,
        body_len,
        body,
        body_sha256,
    }
}

/// Compresses only when the body is big enough and zstd saves at least 10%:
/// otherwise reads would pay decompression for nothing.
fn choose_encoding(raw: Vec<u8>, compress_min_bytes: usize) -> (BodyEncoding, Vec<u8>) {
    if raw.is_empty() || raw.len() < compress_min_bytes {
        return (BodyEncoding::Raw, raw);
    }
    match zstd::bulk::compress(&raw, ZSTD_LEVEL) {
        Ok(z) if z.len() <= raw.len() / 10 * 9 => (BodyEncoding::Zstd, z),
        Ok(_) => (BodyEncoding::Raw, raw),
        Err(e) => {
            // Compression is an optimisation; storing raw is always correct.
            tracing::warn!(error = %e, "zstd compression failed, storing body raw");
            (BodyEncoding::Raw, raw)
        }
    }
}

impl Prepared {
    /// Links the record into the chain at `seq` and encodes the stored value.
    pub(crate) fn seal(
        &self,
        seq: Seq,
        prev_chain: [u8; 32],
    ) -> Result<([u8; 32], Vec<u8>), JournalError> {
        let canonical = canonical_bytes(
            seq,
            self.time_ms,
            &self.header,
            self.body_len,
            &self.body_sha256,
        );
        let chain = chain_hash(&prev_chain, &canonical);
        let stored = StoredRef {
            seq,
            time_ms: self.time_ms,
            header: &self.header,
            encoding: self.encoding,
            body_len: self.body_len,
            body: &self.body,
            body_sha256: self.body_sha256,
            prev_chain,
            chain,
        };
        let mut value = Vec::with_capacity(self.body.len() + 512);
        value.push(FORMAT_V1);
        let value = postcard::to_extend(&stored, value).map_err(JournalError::Encode)?;
        Ok((chain, value))
    }
}

/// Decodes a stored value found under `key_seq` (used only to name the
/// record in errors; callers compare it with `Stored::seq` where it matters).
pub(crate) fn decode(key_seq: Seq, value: &[u8]) -> Result<Stored, JournalError> {
    let (&version, rest) = value
        .split_first()
        .ok_or_else(|| JournalError::corrupt(key_seq, "empty value"))?;
    if version != FORMAT_V1 {
        return Err(JournalError::corrupt(
            key_seq,
            format!("unknown record format version {version}"),
        ));
    }
    let (stored, trailing): (Stored, _) = postcard::take_from_bytes(rest)
        .map_err(|e| JournalError::corrupt(key_seq, format!("undecodable record: {e}")))?;
    if !trailing.is_empty() {
        return Err(JournalError::corrupt(
            key_seq,
            format!("{} trailing bytes after record", trailing.len()),
        ));
    }
    if !stored.header.has_body() && stored.body_len != 0 {
        return Err(JournalError::corrupt(
            key_seq,
            "body on a record kind without one",
        ));
    }
    Ok(stored)
}

impl Stored {
    /// The chain hash this record should have given its predecessor's.
    pub(crate) fn expected_chain(&self, prev_chain: &[u8; 32]) -> [u8; 32] {
        let canonical = canonical_bytes(
            self.seq,
            self.time_ms,
            &self.header,
            self.body_len,
            &self.body_sha256,
        );
        chain_hash(prev_chain, &canonical)
    }

    /// The raw body, checked against `body_len` and `body_sha256`.
    pub(crate) fn raw_body(&self) -> Result<Vec<u8>, JournalError> {
        let raw = match self.encoding {
            BodyEncoding::Raw => self.body.clone(),
            BodyEncoding::Zstd => self.decompress()?,
        };
        if raw.len() as u64 != self.body_len {
            return Err(JournalError::corrupt(
                self.seq,
                format!("body is {} bytes, header says {}", raw.len(), self.body_len),
            ));
        }
        if sha256(&raw) != self.body_sha256 {
            return Err(JournalError::corrupt(self.seq, "body hash mismatch"));
        }
        Ok(raw)
    }

    fn decompress(&self) -> Result<Vec<u8>, JournalError> {
        let corrupt = |e: std::io::Error| {
            JournalError::corrupt(self.seq, format!("body decompression failed: {e}"))
        };
        // Read at most one byte past the declared length: a corrupted length
        // or a zstd bomb must not make us allocate without bound.
        let limit = self.body_len.saturating_add(1);
        let mut out = Vec::with_capacity(self.body_len.min(self.body.len() as u64 * 16) as usize);
        zstd::stream::read::Decoder::new(self.body.as_slice())
            .map_err(corrupt)?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        Ok(out)
    }

    /// Full record, body restored and verified.
    pub(crate) fn into_record(self) -> Result<Record, JournalError> {
        let body = self.raw_body()?;
        let mut kind = self.header;
        kind.put_body(body);
        Ok(Record {
            seq: self.seq,
            time_ms: self.time_ms,
            kind,
            body_sha256: self.body_sha256,
            prev_chain: self.prev_chain,
            chain: self.chain,
        })
    }
}

// serde's default for byte slices is an element-by-element sequence; these
// make postcard copy bodies as one block (same wire bytes, much faster).
fn ser_bytes<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    d.deserialize_byte_buf(V)
}

/// Big-endian keys make sled's byte order the seq order.
pub(crate) fn seq_key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn key_seq(key: &[u8]) -> Option<Seq> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditRecord, MessageRecord};

    fn message(body: Vec<u8>) -> NewRecord {
        NewRecord {
            time_ms: 1_700_000_000_000,
            kind: RecordKind::Message(MessageRecord {
                mail_from: "a@example.org".into(),
                rcpt_to: vec!["b@example.org".into(), "c@example.org".into()],
                message_id: Some("<x@y>".into()),
                body,
                ..Default::default()
            }),
        }
    }

    fn roundtrip(rec: NewRecord, min: usize) -> (BodyEncoding, usize, Record) {
        let p = prepare(rec, min);
        let (encoding, stored_len) = (p.encoding, p.body.len());
        let (chain, value) = p.seal(7, [3; 32]).unwrap();
        let stored = decode(7, &value).unwrap();
        assert_eq!(stored.chain, chain);
        assert_eq!(stored.expected_chain(&[3; 32]), chain);
        (encoding, stored_len, stored.into_record().unwrap())
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let rec = message(b"Subject: hi\r\n\r\nhello\r\n".to_vec());
        let (enc, _, back) = roundtrip(rec.clone(), 512);
        assert_eq!(enc, BodyEncoding::Raw);
        assert_eq!(back.kind, rec.kind);
        assert_eq!(back.time_ms, rec.time_ms);
        assert_eq!(back.seq, 7);
        assert_eq!(back.prev_chain, [3; 32]);
        assert_eq!(back.body_sha256, sha256(rec.kind.body()));

        let audit = NewRecord {
            time_ms: 1,
            kind: RecordKind::Audit(AuditRecord {
                actor: "officer".into(),
                action: "search".into(),
                detail: "q=foo".into(),
            }),
        };
        let (_, _, back) = roundtrip(audit.clone(), 512);
        assert_eq!(back.kind, audit.kind);
        assert_eq!(back.body_sha256, sha256(b""));
    }

    #[test]
    fn compresses_only_big_compressible_bodies() {
        let text = b"To: someone\r\n".repeat(200);
        let (enc, stored_len, back) = roundtrip(message(text.clone()), 512);
        assert_eq!(enc, BodyEncoding::Zstd);
        assert!(stored_len < text.len() / 2);
        assert_eq!(back.kind.body(), text.as_slice());

        // Same body but below the threshold stays raw.
        let (enc, _, _) = roundtrip(message(text.clone()), text.len() + 1);
        assert_eq!(enc, BodyEncoding::Raw);

        // Random bytes do not shrink by 10%: stored raw.
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let (enc, stored_len, back) = roundtrip(message(noise.clone()), 512);
        assert_eq!(enc, BodyEncoding::Raw);
        assert_eq!(stored_len, noise.len());
        assert_eq!(back.kind.body(), noise.as_slice());
    }

    #[test]
    fn unknown_version_and_trailing_bytes_are_corrupt() {
        let (_, mut value) = prepare(message(b"x".to_vec()), 512)
            .seal(1, [0; 32])
            .unwrap();
        let mut bad = value.clone();
        bad[0] = 9;
        let err = decode(1, &bad).unwrap_err();
        assert!(
            err.to_string().contains("unknown record format version 9"),
            "{err}"
        );
        value.push(0);
        assert!(matches!(
            decode(1, &value),
            Err(JournalError::Corrupt { seq: 1, .. })
        ));
        assert!(matches!(
            decode(4, &[]),
            Err(JournalError::Corrupt { seq: 4, .. })
        ));
    }
}
