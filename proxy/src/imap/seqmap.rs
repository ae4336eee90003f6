//! Message sequence numbers on the replica when its order of a mailbox's messages differs
//! from the order of the UIDs the client knows ([`Translation::ordered`] is false: two
//! messages that arrived together were stored in one order at the primary and the other
//! at the replica). IMAP numbers messages in UID order, so the client's message n is the
//! one with the n-th lowest presented UID, while the server's is the one with its n-th
//! lowest UID. A session keeps both orders of the messages listed right after its SELECT;
//! messages that arrive later come last in both orders, under the same numbers.
//!
//! The numbers are rewritten in the commands a session sends (FETCH, STORE, COPY, MOVE and
//! SEARCH criteria) and in the responses it relays (FETCH, EXPUNGE, SEARCH, SORT, ESEARCH,
//! UNSEEN). Pure: no IO.

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::uidmap::{Translation, merged, ordered, runs, set_of, value};

/// Both orders of the messages a session's SELECT found on the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqMap {
    /// (replica UID, presented UID) of each listed message still in the mailbox, by
    /// replica UID: index + 1 is the server's number.
    by_server: Vec<(u32, u32)>,
    /// (presented UID, replica UID), by presented UID: index + 1 is the client's number.
    by_client: Vec<(u32, u32)>,
    /// Messages in the mailbox now (the last EXISTS, less the expunges since).
    exists: u32,
}

impl SeqMap {
    /// `listed`: the replica UIDs in the session's view right after its SELECT; `exists`:
    /// the message count the server reported. `None` when both orders agree.
    pub fn new(t: &Translation, listed: &[u32], exists: u32) -> Option<SeqMap> {
        let mut by_server: Vec<(u32, u32)> = listed
            .iter()
            .filter_map(|&r| Some((r, t.presented(r)?)))
            .collect();
        by_server.sort_unstable();
        by_server.dedup();
        if by_server.windows(2).all(|w| w[0].1 < w[1].1) {
            return None;
        }
        let mut by_client: Vec<(u32, u32)> = by_server.iter().map(|&(r, p)| (p, r)).collect();
        by_client.sort_unstable();
        let exists = exists.max(u32::try_from(by_server.len()).unwrap_or(u32::MAX));
        Some(SeqMap {
            by_server,
            by_client,
            exists,
        })
    }

    fn listed(&self) -> u32 {
        u32::try_from(self.by_server.len()).unwrap_or(u32::MAX)
    }

    /// The client's number for the server's message `j`.
    pub fn to_client(&self, j: u32) -> u32 {
        if j == 0 || j > self.listed() {
            return j;
        }
        let p = self.by_server[j as usize - 1].1;
        self.by_client
            .binary_search_by_key(&p, |&(p, _)| p)
            .map_or(j, |at| at as u32 + 1)
    }

    /// The server's number for the client's message `i`.
    pub fn to_server(&self, i: u32) -> u32 {
        if i == 0 || i > self.listed() {
            return i;
        }
        let r = self.by_client[i as usize - 1].1;
        self.by_server
            .binary_search_by_key(&r, |&(r, _)| r)
            .map_or(i, |at| at as u32 + 1)
    }

    /// The server expunged its message `j`: the client's number for it.
    pub fn expunged(&mut self, j: u32) -> u32 {
        let i = self.to_client(j);
        if j >= 1 && j <= self.listed() {
            let (_, p) = self.by_server.remove(j as usize - 1);
            if let Ok(at) = self.by_client.binary_search_by_key(&p, |&(p, _)| p) {
                self.by_client.remove(at);
            }
        }
        self.exists = self.exists.saturating_sub(1);
        i
    }

    /// A set of the client's numbers as the server's (`*` is the last message in both).
    pub fn set_to_server(&self, set: &SequenceSet) -> SequenceSet {
        if self.exists == 0 {
            return set.clone();
        }
        let listed = self.listed();
        // The listed messages the set names, as ranges first: a client's set may repeat
        // a range many times, but no message is mapped more than once.
        let mut regions: Vec<(u32, u32)> = Vec::new();
        let mut out = Vec::new();
        for sequence in set.0.as_ref() {
            let (low, high) = match *sequence {
                Sequence::Single(SeqOrUid::Asterisk) => (self.exists, self.exists),
                Sequence::Single(SeqOrUid::Value(v)) => (v.get(), v.get()),
                Sequence::Range(a, b) => {
                    let (low, high) = ordered(a, b);
                    let high = high.unwrap_or(self.exists);
                    (low.min(high), low.max(high))
                }
            };
            let region_high = high.min(listed);
            if low == 1 && region_high == listed {
                // All of the listed messages: the same ones under either numbering.
                out.push(Sequence::Range(value(1), value(listed)));
            } else if low <= region_high {
                regions.push((low, region_high));
            }
            let tail_low = low.max(listed + 1);
            if tail_low <= high {
                out.push(Sequence::Range(value(tail_low), value(high)));
            }
        }
        let singles = merged(regions)
            .into_iter()
            .flat_map(|(low, high)| (low..=high).map(|i| self.to_server(i)))
            .collect();
        out.extend(runs(singles));
        set_of(out)
    }

    /// Reads a response head from the replica and returns it with the server's numbers
    /// turned into the client's, or `None` when it has none. `seq_search`: a SEARCH or
    /// SORT without UID is in flight, so `* SEARCH` and `* SORT` list numbers.
    pub fn response_head(&mut self, line: &[u8], seq_search: bool) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(line).ok()?;
        let upper = text.to_ascii_uppercase();
        let words: Vec<&str> = upper.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["*", n, "EXISTS", ..] => {
                self.exists = n.parse().ok()?;
                None
            }
            ["*", n, "EXPUNGE", ..] => {
                let i = self.expunged(n.parse().ok()?);
                Some(format!("* {i} EXPUNGE\r\n").into_bytes())
            }
            ["*", n, "FETCH", ..] => {
                let i = self.to_client(n.parse().ok()?);
                let at = text.find(" FETCH").or_else(|| upper.find(" FETCH"))?;
                Some(format!("* {i}{}", &text[at..]).into_bytes())
            }
            ["*", kind @ ("SEARCH" | "SORT"), ..] if seq_search => Some(self.numbers(text, kind)),
            ["*", "THREAD", ..] if seq_search => {
                Some(super::rewrite::each_number(text, "* THREAD", |j| {
                    Some(self.to_client(j))
                }))
            }
            ["*", "ESEARCH", ..] if !upper.contains(") UID") && !upper.contains(" UID ") => {
                Some(self.esearch(text))
            }
            ["*", "OK", code, ..] if code.starts_with("[UNSEEN") => {
                let start = upper.find("[UNSEEN ")? + "[UNSEEN ".len();
                let len = text[start..].bytes().take_while(u8::is_ascii_digit).count();
                let j: u32 = text[start..start + len].parse().ok()?;
                let i = self.to_client(j);
                Some(format!("{}{i}{}", &text[..start], &text[start + len..]).into_bytes())
            }
            _ => None,
        }
    }

    /// `* SEARCH 3 1 2 [(MODSEQ n)]` or `* SORT ...`: each number mapped where it stands
    /// (a SORT's order is the answer).
    fn numbers(&self, text: &str, kind: &str) -> Vec<u8> {
        let body = text.trim_end();
        let (list, modseq) = match body.find(" (") {
            Some(at) => (&body[..at], &body[at..]),
            None => (body, ""),
        };
        let mut out = format!("* {kind}");
        for word in list.split_ascii_whitespace().skip(2) {
            out.push(' ');
            match word.parse::<u32>() {
                Ok(j) => out.push_str(&self.to_client(j).to_string()),
                Err(_) => out.push_str(word),
            }
        }
        out.push_str(modseq);
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// `* ESEARCH (TAG "a") ALL set MIN n MAX n COUNT n` in numbers: ALL mapped as a set,
    /// MIN and MAX taken from it when it is there.
    fn esearch(&self, text: &str) -> Vec<u8> {
        let body = text.trim_end();
        let words: Vec<&str> = body.split(' ').collect();
        let mut all: Option<Vec<u32>> = None;
        for pair in words.windows(2) {
            if pair[0].eq_ignore_ascii_case("ALL")
                && let Ok(set) = SequenceSet::try_from(pair[1])
                && let Some(numbers) = expand(&set, self.exists as usize)
            {
                all = Some(numbers.into_iter().map(|j| self.to_client(j)).collect());
            }
        }
        let mut out: Vec<String> = Vec::new();
        let mut at = 0;
        while at < words.len() {
            let word = words[at];
            out.push(word.to_string());
            let key = word.to_ascii_uppercase();
            if matches!(key.as_str(), "ALL" | "MIN" | "MAX")
                && let Some(next) = words.get(at + 1)
            {
                let mapped = match (key.as_str(), &all) {
                    ("ALL", Some(all)) => show_set(all),
                    ("MIN", Some(all)) => all.iter().min().map(u32::to_string),
                    ("MAX", Some(all)) => all.iter().max().map(u32::to_string),
                    _ => next.parse().ok().map(|j| self.to_client(j).to_string()),
                };
                out.push(mapped.unwrap_or_else(|| next.to_string()));
                at += 1;
            }
            at += 1;
        }
        format!("{}\r\n", out.join(" ")).into_bytes()
    }
}

/// The most messages a listing may name (a mailbox larger than this is not mapped).
pub const MAX_LISTED: usize = 10_000_000;

/// The numbers of a set without `*` (a server's answer names its messages), or `None` when
/// it names more than `max` (no more than the mailbox holds: a larger set is a broken
/// answer, and spelling it out could take all memory).
pub fn expand(set: &SequenceSet, max: usize) -> Option<Vec<u32>> {
    let mut count = 0usize;
    for sequence in set.0.as_ref() {
        count += match *sequence {
            Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)) => {
                a.get().abs_diff(b.get()) as usize + 1
            }
            _ => 1,
        };
        if count > max {
            return None;
        }
    }
    let mut out = Vec::with_capacity(count);
    for sequence in set.0.as_ref() {
        match *sequence {
            Sequence::Single(SeqOrUid::Value(v)) => out.push(v.get()),
            Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)) => {
                out.extend(a.get().min(b.get())..=a.get().max(b.get()));
            }
            _ => {}
        }
    }
    Some(out)
}

/// Numbers as a compact set (`1:3,7`).
fn show_set(values: &[u32]) -> Option<String> {
    let parts: Vec<String> = runs(values.to_vec())
        .into_iter()
        .map(|s| match s {
            Sequence::Single(SeqOrUid::Value(v)) => v.to_string(),
            Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)) => format!("{a}:{b}"),
            _ => String::new(),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The command that lists a session's messages by UID, compactly (ESEARCH, RFC 4731).
pub const LISTING: &str = "UID SEARCH RETURN (ALL) ALL";

/// The UIDs in the answer to [`LISTING`] sent under `tag`: `Some` for its `* ESEARCH`
/// line (empty for an empty mailbox), `None` for any other line.
pub fn listed_uids(line: &[u8], tag: &str) -> Option<Vec<u32>> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let upper = text.to_ascii_uppercase();
    let ours = format!("* ESEARCH (TAG \"{}\")", tag.to_ascii_uppercase());
    if !upper.starts_with(&ours) {
        return None;
    }
    let words: Vec<&str> = text.split(' ').collect();
    let all = words
        .windows(2)
        .find(|pair| pair[0].eq_ignore_ascii_case("ALL"))
        .and_then(|pair| SequenceSet::try_from(pair[1]).ok());
    match all {
        Some(set) => expand(&set, MAX_LISTED),
        None => Some(Vec::new()),
    }
}

#[cfg(test)]
#[path = "seqmap_tests.rs"]
mod tests;
