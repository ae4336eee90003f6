//! levee's durable, hash-chained, append-only journal.
//!
//! Every message levee accepts is appended here *before* the SMTP client is
//! told 250; the replica streams it by seq, compliance officers search it,
//! and [`Journal::verify`] proves it was not altered. The journal knows
//! nothing about SMTP or IMAP: callers hand it envelopes, bytes and the
//! Message-ID they parsed.
//!
//! # Replication
//!
//! The primary's records are read with [`Journal::read_from`] and written
//! into the replica site's journal with [`Journal::append_replicated`],
//! verbatim: same seqs, times, hashes and chain links, so both journals
//! verify to the same chain. A batch must continue exactly at the replica's
//! `head() + 1` and [`Journal::last_chain`], and every body hash and chain
//! link is recomputed (see [`check_chain`]); a batch that does not fit is
//! refused whole with [`JournalError::Mismatch`]. Each journal picks its own
//! body compression: the chain covers the raw body's length and hash only.
//! Small named values such as the replication epoch live beside the records
//! ([`Journal::set_meta`], [`Journal::get_meta`]).
//!
//! # Layout
//!
//! One sled database in the journal directory (`dir/db`, `dir/conf`,
//! `dir/blobs/`, `dir/snap.*`) with these trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `records` | seq, u64 big-endian | `[format version = 1][postcard(StoredRecord)]` |
//! | `idx_message_id` | `message_id \|\| 0x00 \|\| seq_be` | empty |
//! | `idx_sender` | `lowercase(mail_from) \|\| 0x00 \|\| seq_be` | empty |
//! | `idx_recipient` | `lowercase(rcpt) \|\| 0x00 \|\| seq_be` | empty |
//! | `idx_day` | `YYYYMMDD (UTC) \|\| 0x00 \|\| seq_be` | empty |
//! | `state` | seq_be | postcard([`DeliveryState`]) |
//! | `undelivered` | seq_be | empty (Pending/Deferred only) |
//! | `resync_primary` | seq_be | empty: messages the primary has yet to receive |
//! | `unconfirmed_primary` | seq_be | ms_be: since when the primary's MTA may hold a copy it did not confirm |
//! | `idx_held` | `seq_be \|\| 0x00 \|\| hold_be` | empty: record under legal hold `hold` |
//! | `idx_holds`, `idx_released` | `0x00 \|\| hold_be` | empty: holds placed, released |
//! | `idx_pruned` | `first_be \|\| last_be \|\| prev_chain \|\| chain` | empty: a pruned run |
//! | `meta` | `indexed_through` | seq_be up to which indexes/state are written |
//! | `user_meta` | caller's name (UTF-8) | caller's bytes ([`Journal::set_meta`]) |
//!
//! The last four trees are derived from the `journal-hold`, `journal-release` and
//! `journal-prune` audit records, like the search indexes ([`retention`]).
//!
//! `StoredRecord` is, in postcard order: `seq`, `time_ms`, the
//! [`RecordKind`] with an empty body, the body encoding (`Raw`, `Zstd`, and with a
//! [`BodyKey`] `RawSealed` or `ZstdSealed`: AES-256-GCM over the stored bytes),
//! the raw body length, the stored (maybe zstd-compressed) body,
//! `body_sha256`, `prev_chain`, `chain`. Bodies are compressed when they are
//! at least [`JournalOptions::compress_min_bytes`] long and zstd saves at
//! least 10%. A version byte other than 1 is reported as
//! [`JournalError::Corrupt`].
//!
//! # Hash chain
//!
//! ```text
//! body_sha256 = SHA-256(raw body)  (the message; an APPENDed one; empty for other kinds)
//! chain(n)    = SHA-256(chain(n-1) || canonical(n)) with chain(0) = 32 zero bytes
//!
//! canonical = "LJC1"                       4 ASCII bytes
//!          || u64be(seq) || u64be(time_ms)
//!          || kind
//!          || u64be(raw body length) || body_sha256 (32 bytes)
//!
//! kind for Message = 0x01 || str(mail_from)
//!                    || u64be(number of rcpt_to) || str(rcpt)...
//!                    || opt(client.addr) || opt(client.helo)
//!                    || opt(client.authenticated_user)
//!                    || str(client.listener) || (0x01 if client.tls else 0x00)
//!                    || opt(message_id)
//! kind for Audit   = 0x02 || str(actor) || str(action) || str(detail)
//! kind for Mailbox = 0x03 || str(user) || change
//! kind for MailboxAtReplica = 0x04 || str(user) || change
//!
//! change = 0x01 (Append)  || str(mailbox) || strs(flags) || opt(internal_date)
//!        | 0x02 (Flags)   || str(mailbox) || u64be(n) || (ref || strs(flags))...
//!        | 0x03 (Expunge) || str(mailbox) || u64be(n) || ref...
//!        | 0x04 (Copy)    || str(from) || str(to) || u64be(n) || ref...
//!        | 0x05 (Create)  || str(mailbox)
//!        | 0x06 (Delete)  || str(mailbox)
//!        | 0x07 (Rename)  || str(from) || str(to)
//! ref    = u32be(uid) || opt(trace) || opt(message_id) || u64be(size)
//! strs   = u64be(count) || str(s)...
//!
//! str(s) = u64be(byte length of UTF-8 s) || bytes of s
//! opt(x) = 0x00 if absent, else 0x01 || str(x)
//! ```
//!
//! Strings are hashed exactly as stored (no case folding or trimming).
//!
//! # Retention
//!
//! [`Journal::prune`] removes delivered messages and mailbox changes older than a
//! cut-off, except those under a [`Journal::hold`]; audit records stay. Each pruned run
//! leaves a checkpoint (its first and last seq, the chain hash before and after it) in
//! the `journal-prune` record that removed it, and [`Journal::verify`] crosses the run
//! by that checkpoint, so the remaining chain verifies and stays tamper-evident. A
//! replica that receives the prune record removes the same records.
//!
//! # Durability
//!
//! [`Journal::append`] returns only after sled's `flush()`, an fsync of any
//! new sled blob files and an `fdatasync` of `dir/db`. All writes go through
//! one writer thread per journal, which takes every append queued (up to
//! 1024) as one group: it gives them consecutive seqs, writes records,
//! indexes and states, sets `meta/indexed_through` once, performs that one
//! flush + fdatasync for the whole group, publishes the new durable head and
//! only then answers the group's appenders (see `commit.rs`);
//! [`Journal::append_replicated`] batches take the same path. Appends that
//! arrive while a group is being synced form the next group, so the number
//! of syncs adapts to the disk's speed. [`Journal::head`],
//! [`Journal::watch_head`], reads and index lookups only ever show durable
//! records. Delivery-state updates are applied at once and become durable
//! with the next group commit or [`Journal::flush`].
//!
//! A group whose write or sync fails is rolled back as a whole and all its
//! appenders get the error ([`JournalError::Full`] when the disk is full):
//! seqs stay gap-free, and the next append reuses them. Dropping the last
//! `Journal` clone lets the writer finish queued work and joins it, after
//! which the directory can be reopened.
//!
//! # Memory
//!
//! sled's page cache is capped at [`JournalOptions::cache_bytes`] (64 MiB by
//! default), which bounds the journal's memory regardless of its size. Each
//! thread that appends or reads keeps one zstd compression and one
//! decompression context for reuse.

mod codec;
mod commit;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod mailbox;
pub mod metrics;
mod prune;
mod record;
mod recovery;
mod resync;
pub mod retention;
mod scan;
mod seal;
mod space;
mod state;
mod store;
mod sync;
mod verify;

pub use error::JournalError;
pub use mailbox::{MailboxChange, MailboxRecord, MessageRef};
pub use prune::{PRUNE_BATCH, PruneReport};
pub use record::{
    Appended, AuditRecord, ClientInfo, MessageRecord, NewRecord, Record, RecordKind, Seq,
    check_chain,
};
pub use retention::Hold;
pub use seal::BodyKey;
pub use state::{DeliveryState, DeliveryStatus};
pub use store::{Journal, JournalOptions};
pub use verify::{PROGRESS_EVERY, VerifyReport};
