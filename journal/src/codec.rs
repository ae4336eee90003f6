//! On-disk form of a record: `[format version][postcard(StoredRecord)]`.
//!
//! The body is kept apart from the header so indexes can be rebuilt and the
//! chain re-checked without touching (or decompressing) large bodies, and so
//! the body can be zstd-compressed when that actually pays.

use std::cell::RefCell;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::error::JournalError;
use crate::record::{RecordKind, Seq, canonical_bytes, chain_hash, sha256};
use crate::seal::BodyKey;
use crate::{NewRecord, Record};

/// The only format written today. Unknown versions are reported as corrupt
/// rather than guessed at.
pub(crate) const FORMAT_V1: u8 = 1;

/// zstd level: 1 keeps compression well below disk latency on the append path.
const ZSTD_LEVEL: i32 = 1;

/// Bodies up to this size are decompressed in one call into a buffer
/// allocated up front; larger ones stream into a growing buffer.
const BULK_DECOMPRESS_MAX: u64 = 64 << 20;

/// How a body is stored. New variants only ever go at the end (postcard numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum BodyEncoding {
    Raw,
    Zstd,
    /// Raw, then sealed with the journal's body key (`seal.rs`).
    RawSealed,
    /// zstd-compressed, then sealed.
    ZstdSealed,
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

/// Hashes, (maybe) compresses and (with a key) seals outside the writer thread.
pub(crate) fn prepare(
    rec: NewRecord,
    compress_min_bytes: usize,
    key: Option<&BodyKey>,
) -> Prepared {
    let body_sha256 = sha256(rec.kind.body());
    prepare_hashed(rec, body_sha256, compress_min_bytes, key)
}

/// [`prepare`] for a body whose SHA-256 the caller already computed.
pub(crate) fn prepare_hashed(
    rec: NewRecord,
    body_sha256: [u8; 32],
    compress_min_bytes: usize,
    key: Option<&BodyKey>,
) -> Prepared {
    let mut header = rec.kind;
    let raw = header.take_body();
    let body_len = raw.len() as u64;
    let (mut encoding, mut body) = choose_encoding(raw, compress_min_bytes);
    if let Some(key) = key.filter(|_| body_len > 0) {
        body = key.seal(&body, &body_sha256);
        encoding = match encoding {
            BodyEncoding::Zstd => BodyEncoding::ZstdSealed,
            _ => BodyEncoding::RawSealed,
        };
    }
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
///
/// The output buffer is sized to exactly that 10% budget, so zstd gives up
/// (with "destination too small") as soon as the result could not be used.
fn choose_encoding(raw: Vec<u8>, compress_min_bytes: usize) -> (BodyEncoding, Vec<u8>) {
    if raw.is_empty() || raw.len() < compress_min_bytes {
        return (BodyEncoding::Raw, raw);
    }
    let mut z = Vec::with_capacity(raw.len() / 10 * 9);
    match with_compressor(|c| c.compress_to_buffer(&raw, &mut z)) {
        Ok(_) => (BodyEncoding::Zstd, z),
        // Did not fit the budget (or zstd failed, which an optimisation may
        // do): storing raw is always correct.
        Err(_) => (BodyEncoding::Raw, raw),
    }
}

thread_local! {
    // Creating a zstd context costs about as much as compressing a 4 KiB
    // body, so each thread keeps one of each for its lifetime.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn with_compressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> io::Result<T>,
) -> io::Result<T> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let c = match slot {
            Some(c) => c,
            None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        f(c)
    })
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> io::Result<T>,
) -> io::Result<T> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        f(d)
    })
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

    /// The raw body, checked against `body_len` and `body_sha256`; `key` opens sealed
    /// bodies.
    pub(crate) fn raw_body(&self, key: Option<&BodyKey>) -> Result<Vec<u8>, JournalError> {
        let opened = match self.encoding {
            BodyEncoding::Raw | BodyEncoding::Zstd => None,
            BodyEncoding::RawSealed | BodyEncoding::ZstdSealed => {
                let key = key.ok_or_else(|| {
                    JournalError::Key(format!(
                        "record {}'s body is encrypted and no key was given",
                        self.seq
                    ))
                })?;
                Some(key.open(self.seq, &self.body, &self.body_sha256)?)
            }
        };
        let stored = opened.as_deref().unwrap_or(&self.body);
        let raw = match self.encoding {
            BodyEncoding::Raw | BodyEncoding::RawSealed => stored.to_vec(),
            BodyEncoding::Zstd | BodyEncoding::ZstdSealed => self.decompress(stored)?,
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

    fn decompress(&self, compressed: &[u8]) -> Result<Vec<u8>, JournalError> {
        let corrupt = |e: io::Error| {
            JournalError::corrupt(self.seq, format!("body decompression failed: {e}"))
        };
        // Fast path with the thread's reusable context, taken only when the
        // zstd frame and our header agree on the length: the output buffer is
        // allocated up front, so a corrupted length alone must not size it.
        // zstd fails rather than write past that buffer.
        let framed = zstd::zstd_safe::get_frame_content_size(compressed);
        if matches!(framed, Ok(Some(n)) if n == self.body_len && n <= BULK_DECOMPRESS_MAX) {
            let mut out = Vec::with_capacity(self.body_len as usize);
            with_decompressor(|d| d.decompress_to_buffer(compressed, &mut out)).map_err(corrupt)?;
            return Ok(out);
        }
        // Read at most one byte past the declared length: a corrupted length
        // or a zstd bomb must not make us allocate without bound.
        let limit = self.body_len.saturating_add(1);
        let mut out = Vec::with_capacity(self.body_len.min(compressed.len() as u64 * 16) as usize);
        zstd::stream::read::Decoder::new(compressed)
            .map_err(corrupt)?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        Ok(out)
    }

    /// Full record, body restored and verified.
    pub(crate) fn into_record(self, key: Option<&BodyKey>) -> Result<Record, JournalError> {
        let body = self.raw_body(key)?;
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
mod tests;
