//! Secondary indexes for compliance search: by Message-ID, sender,
//! recipient and UTC day; and of audit records, newest first for the admin API.
//!
//! Keys are `value || 0x00 || seq_be` with no value stored, so a lookup is a
//! prefix scan and results come out in seq order. Inserting the same entry
//! twice is harmless, which is what lets recovery simply re-index the tail.

use crate::error::JournalError;
use crate::record::{Record, RecordKind, Seq};
use crate::store::{Journal, Trees};

/// Which index an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    MessageId,
    Sender,
    Recipient,
    Day,
    /// Every audit record (empty value: the key is `0x00 || seq_be`).
    Audit,
    /// Records under a legal hold: `seq_be || 0x00 || hold_be` (see `retention.rs`).
    Held,
    /// Every hold placed: `0x00 || hold_be`.
    Holds,
    /// Every hold released: `0x00 || hold_be`.
    Released,
    /// Every pruned range: `first_be || last_be || prev_chain || chain`.
    Pruned,
}

/// Set in `meta` once every audit record written before the audit index existed is in it.
const AUDIT_BACKFILLED: &[u8] = b"audit_index_backfilled";

/// Message-IDs are compared as given, minus surrounding whitespace and angle
/// brackets, so `<a@b>` and `a@b` find the same message.
pub(crate) fn normalize_message_id(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(id)
        .trim()
}

/// Addresses are case-insensitive for search purposes (RFC 5321 leaves the
/// local part's case to the receiver; compliance search wants the lenient view).
pub(crate) fn normalize_address(addr: &str) -> String {
    let a = addr.trim();
    a.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(a)
        .trim()
        .to_lowercase()
}

/// `YYYYMMDD` of the UTC day containing `time_ms`.
pub(crate) fn day_value(time_ms: u64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format_day(t.date()),
        // Out of `time`'s range (year > 9999): park such records on one bucket
        // rather than failing the append of a message over a clock bug.
        Err(_) => "99991231".to_owned(),
    }
}

pub(crate) fn format_day(d: time::Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

pub(crate) fn key(value: &[u8], seq: Seq) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 9);
    k.extend_from_slice(value);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Every index entry a record needs.
pub(crate) fn entries(seq: Seq, time_ms: u64, header: &RecordKind) -> Vec<(Index, Vec<u8>)> {
    let mut out = vec![(Index::Day, key(day_value(time_ms).as_bytes(), seq))];
    if let RecordKind::Audit(audit) = header {
        out.push((Index::Audit, key(b"", seq)));
        out.extend(crate::retention::entries(seq, audit));
    }
    if let RecordKind::Message(m) = header {
        if let Some(id) = m.message_id.as_deref().map(normalize_message_id)
            && !id.is_empty()
        {
            out.push((Index::MessageId, key(id.as_bytes(), seq)));
        }
        out.push((
            Index::Sender,
            key(normalize_address(&m.mail_from).as_bytes(), seq),
        ));
        let mut rcpts: Vec<String> = m.rcpt_to.iter().map(|r| normalize_address(r)).collect();
        rcpts.sort();
        rcpts.dedup();
        for r in rcpts {
            out.push((Index::Recipient, key(r.as_bytes(), seq)));
        }
    }
    out
}

impl Trees {
    fn index(&self, which: Index) -> &sled::Tree {
        match which {
            Index::MessageId => &self.idx_message_id,
            Index::Sender => &self.idx_sender,
            Index::Recipient => &self.idx_recipient,
            Index::Day => &self.idx_day,
            Index::Audit => &self.idx_audit,
            Index::Held => &self.idx_held,
            Index::Holds => &self.idx_holds,
            Index::Released => &self.idx_released,
            Index::Pruned => &self.idx_pruned,
        }
    }

    /// Indexes the audit records of a journal written before the audit index existed,
    /// once: a scan of record headers (no bodies).
    pub(crate) fn backfill_audit(&self) -> Result<(), JournalError> {
        if self.meta.get(AUDIT_BACKFILLED)?.is_some() {
            return Ok(());
        }
        let mut found = 0u64;
        for item in self.records.iter() {
            let (k, v) = item?;
            let seq = crate::codec::key_seq(&k)
                .ok_or_else(|| JournalError::corrupt(0, "malformed record key"))?;
            let stored = crate::codec::decode(seq, &v)?;
            if let RecordKind::Audit(_) = stored.header {
                self.idx_audit.insert(key(b"", seq), &[])?;
                found += 1;
            }
        }
        self.meta.insert(AUDIT_BACKFILLED, &[1])?;
        if found > 0 {
            tracing::info!(
                records = found,
                "indexed the journal's earlier audit records"
            );
        }
        Ok(())
    }

    pub(crate) fn insert_index(&self, entries: &[(Index, Vec<u8>)]) -> Result<(), JournalError> {
        for (which, k) in entries {
            self.index(*which).insert(k.as_slice(), &[])?;
        }
        Ok(())
    }

    pub(crate) fn remove_index(&self, entries: &[(Index, Vec<u8>)]) -> Result<(), JournalError> {
        for (which, k) in entries {
            self.index(*which).remove(k.as_slice())?;
        }
        Ok(())
    }

    /// Seqs (ascending, at most `through`) whose entry value is exactly `value`.
    pub(crate) fn lookup(
        &self,
        which: Index,
        value: &[u8],
        through: Seq,
    ) -> Result<Vec<Seq>, JournalError> {
        let mut prefix = value.to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.index(which).scan_prefix(&prefix) {
            let (k, _) = item?;
            // A value containing NUL could share our prefix; the exact length
            // tells the two apart.
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&k[prefix.len()..]);
            let seq = u64::from_be_bytes(be);
            if seq <= through {
                out.push(seq);
            }
        }
        Ok(out)
    }
}

impl Journal {
    /// Durable records whose Message-ID matches (angle brackets optional).
    pub fn by_message_id(&self, id: &str) -> Result<Vec<Seq>, JournalError> {
        let id = normalize_message_id(id);
        self.inner
            .trees
            .lookup(Index::MessageId, id.as_bytes(), self.head())
    }

    /// Durable message records with this envelope sender (case-insensitive).
    pub fn by_sender(&self, addr: &str) -> Result<Vec<Seq>, JournalError> {
        let addr = normalize_address(addr);
        self.inner
            .trees
            .lookup(Index::Sender, addr.as_bytes(), self.head())
    }

    /// Durable message records with this envelope recipient (case-insensitive).
    pub fn by_recipient(&self, addr: &str) -> Result<Vec<Seq>, JournalError> {
        let addr = normalize_address(addr);
        self.inner
            .trees
            .lookup(Index::Recipient, addr.as_bytes(), self.head())
    }

    /// Up to `limit` durable audit records with seq below `before`, newest first.
    pub fn audit_before(&self, before: Seq, limit: usize) -> Result<Vec<Record>, JournalError> {
        let end = before.min(self.head().saturating_add(1));
        let mut out = Vec::new();
        let range = key(b"", 0)..key(b"", end);
        for item in self.inner.trees.idx_audit.range(range).rev().take(limit) {
            let (k, _) = item?;
            let mut be = [0u8; 8];
            be.copy_from_slice(&k[1..]);
            if let Some(record) = self.get(u64::from_be_bytes(be))? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Durable records (of any kind) whose time falls on this UTC day.
    pub fn by_day(&self, day: time::Date) -> Result<Vec<Seq>, JournalError> {
        self.inner
            .trees
            .lookup(Index::Day, format_day(day).as_bytes(), self.head())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize_message_id(" <abc@x> "), "abc@x");
        assert_eq!(normalize_message_id("abc@x"), "abc@x");
        assert_eq!(
            normalize_address("<Alice@Example.ORG>"),
            "alice@example.org"
        );
        assert_eq!(normalize_address(""), "");
    }

    #[test]
    fn day_is_utc() {
        // 2024-02-29T23:59:59.999Z and one ms later.
        assert_eq!(day_value(1_709_251_199_999), "20240229");
        assert_eq!(day_value(1_709_251_200_000), "20240301");
        assert_eq!(day_value(0), "19700101");
    }
}
