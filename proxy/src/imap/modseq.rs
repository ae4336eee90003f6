//! Mod-sequences (CONDSTORE and QRESYNC, RFC 7162) across switchovers. Each site counts
//! its own: the replica's values for a mailbox have nothing to do with the primary's, so
//! a client that knew HIGHESTMODSEQ 900 at the primary and asks the replica for the
//! changes since 900 would be told of none while the replica is at 40 (or of the wrong
//! ones), and keep stale flags for good.
//!
//! levee therefore presents every value raised by a shift that grows with the failover
//! epoch: presented = real + (epoch - 1) * [`STEP`]. Every value a client saw before a
//! switchover is lower than any it sees after it, so "changed since" a value from an
//! earlier epoch asks the server for every change (one full flag resync, never a missed
//! change), and values within one epoch compare as the server's own. Before the first
//! switchover (epoch 1) nothing is changed at all. Pure: no IO.

use std::num::NonZeroU64;

use imap_codec::imap_types::command::{
    Command, CommandBody, FetchModifier, SelectParameter, StoreModifier,
};
use imap_codec::imap_types::search::SearchKey;

/// How far each epoch raises the values: more changes than one mailbox ever sees, and
/// small enough for millions of switchovers within the 63 bits RFC 7162 allows.
pub const STEP: u64 = 1 << 40;

/// What a session adds to the server's mod-sequences (see the module's text).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shift(pub u64);

impl Shift {
    pub fn at_epoch(epoch: u64) -> Shift {
        Shift(epoch.saturating_sub(1).saturating_mul(STEP))
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The server's value for a presented one; 0 when it is from an earlier epoch.
    fn real(self, presented: u64) -> u64 {
        presented.saturating_sub(self.0)
    }

    /// As [`Shift::real`], for the places that need a value above zero ("changed since":
    /// every change, the first one too, is counted from 1).
    fn real_nonzero(self, presented: NonZeroU64) -> NonZeroU64 {
        NonZeroU64::new(self.real(presented.get())).unwrap_or(NonZeroU64::MIN)
    }
}

/// Lowers the mod-sequences a command names (CHANGEDSINCE, UNCHANGEDSINCE, the MODSEQ
/// search key, QRESYNC's known value) to the server's; `true` when any changed. A value
/// from an earlier epoch asks for more than the client needs (every change; a conditional
/// STORE answered MODIFIED), never for less.
pub fn command(command: &mut Command<'_>, shift: Shift) -> bool {
    if shift.is_none() {
        return false;
    }
    match &mut command.body {
        CommandBody::Fetch { modifiers, .. } => {
            let mut changed = false;
            for modifier in modifiers.iter_mut() {
                if let FetchModifier::ChangedSince(since) = modifier {
                    *since = shift.real_nonzero(*since);
                    changed = true;
                }
            }
            changed
        }
        CommandBody::Store { modifiers, .. } => {
            let mut changed = false;
            for modifier in modifiers.iter_mut() {
                let StoreModifier::UnchangedSince(since) = modifier;
                *since = shift.real(*since);
                changed = true;
            }
            changed
        }
        CommandBody::Select { parameters, .. } | CommandBody::Examine { parameters, .. } => {
            let mut changed = false;
            for parameter in parameters.iter_mut() {
                if let SelectParameter::QResync {
                    mod_sequence_value, ..
                } = parameter
                {
                    *mod_sequence_value = shift.real_nonzero(*mod_sequence_value);
                    changed = true;
                }
            }
            changed
        }
        CommandBody::Search { criteria, .. }
        | CommandBody::Sort {
            search_criteria: criteria,
            ..
        }
        | CommandBody::Thread {
            search_criteria: criteria,
            ..
        } => {
            let mut keys = criteria.clone().into_inner();
            let changed = keys
                .iter_mut()
                .fold(false, |c, key| search_key(key, shift) | c);
            if changed && let Ok(keys) = keys.try_into() {
                *criteria = keys;
            }
            changed
        }
        _ => false,
    }
}

fn search_key(key: &mut SearchKey<'_>, shift: Shift) -> bool {
    match key {
        SearchKey::ModSequence { modseq, .. } => {
            *modseq = shift.real(*modseq);
            true
        }
        SearchKey::Not(inner) => search_key(inner, shift),
        SearchKey::Or(a, b) => search_key(a, shift) | search_key(b, shift),
        SearchKey::And(keys) => {
            let mut inner = keys.clone().into_inner();
            let changed = inner
                .iter_mut()
                .fold(false, |c, key| search_key(key, shift) | c);
            if changed && let Ok(inner) = inner.try_into() {
                *keys = inner;
            }
            changed
        }
        _ => false,
    }
}

/// The response head with the server's mod-sequences raised to the presented ones, or
/// `None` when it names none: `[HIGHESTMODSEQ n]`, `MODSEQ (n)` in a FETCH, `(MODSEQ n)`
/// after a SEARCH, `MODSEQ n` in an ESEARCH, `HIGHESTMODSEQ n` in a STATUS. Quoted
/// strings (a subject in an ENVELOPE, say) are left alone.
pub fn response_head(line: &[u8], shift: Shift) -> Option<Vec<u8>> {
    if shift.is_none() || !contains_modseq(line) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 8);
    let mut changed = false;
    let (mut quoted, mut escaped) = (false, false);
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if quoted {
            match (escaped, b) {
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => escaped = false,
            }
            out.push(b);
            i += 1;
            continue;
        }
        if b == b'"' {
            quoted = true;
            out.push(b);
            i += 1;
            continue;
        }
        if let Some(keyword) = keyword_at(line, i) {
            out.extend_from_slice(&line[i..i + keyword]);
            i += keyword;
            // The value follows a space, or a space and a parenthesis (FETCH).
            let mut j = i;
            while j < line.len() && matches!(line[j], b' ' | b'(') && j - i < 2 {
                j += 1;
            }
            let digits = line[j..].iter().take_while(|b| b.is_ascii_digit()).count();
            let value = std::str::from_utf8(&line[j..j + digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok());
            if j > i
                && let Some(value) = value
            {
                out.extend_from_slice(&line[i..j]);
                out.extend_from_slice(value.saturating_add(shift.0).to_string().as_bytes());
                i = j + digits;
                changed = true;
            }
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

fn contains_modseq(line: &[u8]) -> bool {
    line.windows(6).any(|w| w.eq_ignore_ascii_case(b"MODSEQ"))
}

/// The length of `MODSEQ` or `HIGHESTMODSEQ` standing as a word at `i`, if it does.
fn keyword_at(line: &[u8], i: usize) -> Option<usize> {
    if i > 0 && !matches!(line[i - 1], b' ' | b'(' | b'[') {
        return None;
    }
    [&b"HIGHESTMODSEQ"[..], &b"MODSEQ"[..]]
        .into_iter()
        .find(|word| {
            line.len() > i + word.len()
                && line[i..i + word.len()].eq_ignore_ascii_case(word)
                && line[i + word.len()] == b' '
        })
        .map(<[u8]>::len)
}

#[cfg(test)]
#[path = "modseq_tests.rs"]
mod tests;
