//! Entry point of the journal-record fuzz target (`fuzz/`): arbitrary bytes as a stored
//! record value. Decoding must refuse what is not a record, never panic, and never size
//! an allocation from a corrupt length. Not an API.

use crate::codec::decode;
use crate::seal::BodyKey;

/// Decodes `data` as the value stored under seq 1, and restores its body without a key
/// and with one.
pub fn record(data: &[u8]) {
    let Ok(stored) = decode(1, data) else {
        return;
    };
    let _ = stored.expected_chain(&stored.prev_chain);
    let key = BodyKey::from_bytes(&[7; 32]);
    if let Ok(body) = stored.raw_body(Some(&key)) {
        assert_eq!(
            body.len() as u64,
            stored.body_len,
            "a body of the wrong length"
        );
    }
    let _ = stored.into_record(None);
}
