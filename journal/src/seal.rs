//! Encryption at rest of record bodies: AES-256-GCM with a key read from a file.
//!
//! Only bodies are sealed (the messages and APPENDed messages); the envelope in a
//! record's header stays readable, so the indexes and search keep working without the
//! key. A sealed body is stored as `nonce (12 random bytes) || ciphertext || tag`, with
//! the body's SHA-256 as associated data: a sealed body moved under another record's
//! header fails to open. The chain covers the raw body's hash and length, so sealing is
//! a storage choice of each journal, like compression (bodies are compressed first).
//!
//! The journal remembers which key sealed it ([`KEY_ID_META`]): opening it without a
//! key, or with another one, is refused at open with a clear error instead of failing
//! record by record later.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::error::JournalError;
use crate::record::Seq;

/// `meta` key holding the [`BodyKey::id`] of the key that sealed this journal's bodies.
pub(crate) const KEY_ID_META: &[u8] = b"body_key_id";

/// A 256-bit key for record bodies. Its bytes never leave this type: `Debug` shows
/// only the key id.
pub struct BodyKey {
    key: LessSafeKey,
    id: [u8; 8],
}

impl std::fmt::Debug for BodyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyKey({})", hex::encode(self.id))
    }
}

impl PartialEq for BodyKey {
    fn eq(&self, other: &BodyKey) -> bool {
        self.id == other.id
    }
}

impl Eq for BodyKey {}

impl BodyKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> BodyKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 takes 32-byte keys");
        let digest = Sha256::new()
            .chain_update(b"levee journal body key id v1")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        BodyKey {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// Reads a key file: 32 bytes, or 64 hex digits (surrounding whitespace ignored).
    /// Make one with `head -c 32 /dev/urandom > journal.key`.
    pub fn from_file(path: &Path) -> Result<BodyKey, JournalError> {
        let bytes = std::fs::read(path)
            .map_err(|e| JournalError::io(format!("reading key file {}", path.display()), e))?;
        let mut key = [0u8; 32];
        let text = std::str::from_utf8(&bytes).map(str::trim).ok();
        if let Some(hex_text) = text.filter(|t| t.len() == 64)
            && hex::decode_to_slice(hex_text, &mut key).is_ok()
        {
            return Ok(BodyKey::from_bytes(&key));
        }
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(BodyKey::from_bytes(&key));
        }
        Err(JournalError::Key(format!(
            "key file {} must hold 32 bytes or 64 hex digits, not {} bytes",
            path.display(),
            bytes.len()
        )))
    }

    /// A short public name of the key (hex), stored in the journal to tell keys apart.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// `body` sealed: nonce, ciphertext and tag.
    pub(crate) fn seal(&self, body: &[u8], body_sha256: &[u8; 32]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random number generator");
        let mut out = Vec::with_capacity(NONCE_LEN + body.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(body);
        let mut sealed = out.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(body_sha256),
                &mut sealed,
            )
            .expect("AES-GCM seals any body below 64 GiB");
        out.append(&mut sealed);
        out
    }

    /// The body `seal` produced, or why not (wrong key, or altered bytes).
    pub(crate) fn open(
        &self,
        seq: Seq,
        sealed: &[u8],
        body_sha256: &[u8; 32],
    ) -> Result<Vec<u8>, JournalError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(JournalError::corrupt(seq, "sealed body too short"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| JournalError::corrupt(seq, "malformed nonce"))?;
        let mut buf = rest.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(body_sha256), &mut buf)
            .map_err(|_| {
                JournalError::corrupt(
                    seq,
                    "sealed body does not open: altered, or sealed with another key",
                )
            })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Checks `key` against the key this journal's bodies were sealed with (remembering it
/// when the journal has none yet).
pub(crate) fn check_key(meta: &sled::Tree, key: Option<&BodyKey>) -> Result<(), JournalError> {
    let stored = meta.get(KEY_ID_META)?;
    match (stored, key) {
        (None, None) => Ok(()),
        (None, Some(key)) => {
            meta.insert(KEY_ID_META, &key.id)?;
            Ok(())
        }
        (Some(_), None) => Err(JournalError::Key(
            "this journal's bodies are encrypted: give its key file ([journal] key_file, or --key-file)"
                .into(),
        )),
        (Some(id), Some(key)) if id.as_ref() == key.id => Ok(()),
        (Some(id), Some(key)) => Err(JournalError::Key(format!(
            "wrong encryption key: this journal was sealed with key {}, the key given is {}",
            hex::encode(&id),
            key.id()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_hash() {
        let key = BodyKey::from_bytes(&[7; 32]);
        let other = BodyKey::from_bytes(&[8; 32]);
        let hash = [1u8; 32];
        let sealed = key.seal(b"Subject: secret\r\n\r\nbody", &hash);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            key.open(1, &sealed, &hash).unwrap(),
            b"Subject: secret\r\n\r\nbody"
        );
        assert!(other.open(1, &sealed, &hash).is_err());
        assert!(key.open(1, &sealed, &[2u8; 32]).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(key.open(1, &flipped, &hash).is_err());
        assert!(key.open(1, &sealed[..10], &hash).is_err());
        // Two seals of one body differ (fresh nonces).
        assert_ne!(key.seal(b"x", &hash), key.seal(b"x", &hash));
    }

    #[test]
    fn key_files_raw_or_hex_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [9u8; 32]).unwrap();
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, format!("{}\n", hex::encode([9u8; 32]))).unwrap();
        assert_eq!(
            BodyKey::from_file(&raw).unwrap(),
            BodyKey::from_file(&hexed).unwrap()
        );
        let short = dir.path().join("short");
        std::fs::write(&short, b"too short").unwrap();
        let err = BodyKey::from_file(&short).unwrap_err().to_string();
        assert!(err.contains("32 bytes or 64 hex digits"), "{err}");
        assert!(BodyKey::from_file(&dir.path().join("absent")).is_err());
        assert!(!format!("{:?}", BodyKey::from_bytes(&[9; 32])).contains("0909"));
    }
}
