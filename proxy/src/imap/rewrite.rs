//! Applying a [`Translation`] to the stream: UID sets in the client's commands become the
//! replica's, and UIDs in the server's responses become the ones the client knows.
//!
//! Commands are decoded already (imap-codec), so they are changed as values and encoded
//! again. Responses are streamed: only their first line is held ([`super::responses`]),
//! and for a FETCH that line holds the UID (servers send it before any literal), so the
//! heads are rewritten as text.

use imap_codec::CommandCodec;
use imap_codec::encode::{Encoder, Fragment};
use std::num::NonZeroU32;

use imap_codec::imap_types::command::{Command, CommandBody, SelectParameter};
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::framing::ClientMessage;
use super::seqmap::SeqMap;
use super::uidmap::Translation;

/// The command with its UID sets, and with `seq` its message numbers, in the replica's
/// terms, or `None` when it has neither.
pub fn command(
    command: &Command<'_>,
    t: &Translation,
    seq: Option<&SeqMap>,
) -> Option<ClientMessage> {
    let mut command = command.clone();
    let changed = match &mut command.body {
        CommandBody::Fetch {
            sequence_set, uid, ..
        }
        | CommandBody::Store {
            sequence_set, uid, ..
        }
        | CommandBody::Copy {
            sequence_set, uid, ..
        }
        | CommandBody::Move {
            sequence_set, uid, ..
        } => match (*uid, seq) {
            (true, _) => {
                *sequence_set = t.to_replica(sequence_set);
                true
            }
            (false, Some(seq)) => {
                *sequence_set = seq.set_to_server(sequence_set);
                true
            }
            (false, None) => false,
        },
        CommandBody::ExpungeUid { sequence_set } => {
            *sequence_set = t.to_replica(sequence_set);
            true
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
            let (keys, changed) = search_keys(criteria.clone().into_inner(), t, seq);
            if let Ok(keys) = keys.try_into() {
                *criteria = keys;
            }
            changed
        }
        _ => false,
    };
    changed.then(|| encode(&command))
}

/// Whether the command is a SELECT or EXAMINE with QRESYNC's known values.
pub fn has_qresync(command: &Command<'_>) -> bool {
    match &command.body {
        CommandBody::Select { parameters, .. } | CommandBody::Examine { parameters, .. } => {
            parameters
                .iter()
                .any(|p| matches!(p, SelectParameter::QResync { .. }))
        }
        _ => false,
    }
}

/// A SELECT or EXAMINE with QRESYNC's known values (RFC 7162 section 3.2.5): the
/// UIDVALIDITY and known UIDs the client has as the replica's. The message numbers it
/// may pair with UIDs are dropped (they only narrow what the server reports). `true`
/// when it had them.
pub fn qresync(command: &mut Command<'_>, t: &Translation) -> bool {
    let (CommandBody::Select { parameters, .. } | CommandBody::Examine { parameters, .. }) =
        &mut command.body
    else {
        return false;
    };
    let mut changed = false;
    for parameter in parameters.iter_mut() {
        if let SelectParameter::QResync {
            uid_validity,
            known_uids,
            seq_match_data,
            ..
        } = parameter
        {
            if uid_validity.get() == t.primary_validity
                && let Some(replica) = NonZeroU32::new(t.replica_validity)
            {
                *uid_validity = replica;
            }
            if let Some(known) = known_uids {
                *known = t.to_replica(known);
            }
            *seq_match_data = None;
            changed = true;
        }
    }
    changed
}

fn search_keys<'a>(
    keys: Vec<SearchKey<'a>>,
    t: &Translation,
    seq: Option<&SeqMap>,
) -> (Vec<SearchKey<'a>>, bool) {
    let mut changed = false;
    let keys = keys
        .into_iter()
        .map(|key| {
            let (key, c) = search_key(key, t, seq);
            changed |= c;
            key
        })
        .collect();
    (keys, changed)
}

fn search_key<'a>(
    key: SearchKey<'a>,
    t: &Translation,
    seq: Option<&SeqMap>,
) -> (SearchKey<'a>, bool) {
    match key {
        SearchKey::Uid(set) => (SearchKey::Uid(t.to_replica(&set)), true),
        SearchKey::SequenceSet(set) => match seq {
            Some(seq) => (SearchKey::SequenceSet(seq.set_to_server(&set)), true),
            None => (SearchKey::SequenceSet(set), false),
        },
        SearchKey::And(keys) => {
            let (inner, changed) = search_keys(keys.clone().into_inner(), t, seq);
            match inner.try_into() {
                Ok(inner) => (SearchKey::And(inner), changed),
                Err(_) => (SearchKey::And(keys), false),
            }
        }
        SearchKey::Not(inner) => {
            let (inner, changed) = search_key(*inner, t, seq);
            (SearchKey::Not(Box::new(inner)), changed)
        }
        SearchKey::Or(a, b) => {
            let (a, ca) = search_key(*a, t, seq);
            let (b, cb) = search_key(*b, t, seq);
            (SearchKey::Or(Box::new(a), Box::new(b)), ca | cb)
        }
        other => (other, false),
    }
}

pub fn encode(command: &Command<'_>) -> ClientMessage {
    let mut bytes = Vec::new();
    let mut sync_points = Vec::new();
    for fragment in CommandCodec::default().encode(command) {
        match fragment {
            Fragment::Line { data } => bytes.extend_from_slice(&data),
            Fragment::Literal { data, mode } => {
                if mode == LiteralMode::Sync {
                    sync_points.push(bytes.len());
                }
                bytes.extend_from_slice(&data);
            }
        }
    }
    ClientMessage { bytes, sync_points }
}

/// The response head with replica UIDs turned into the client's, or `None` if it has
/// none. `uid_search`: a UID SEARCH is in flight, so `* SEARCH` lists UIDs.
pub fn response_head(line: &[u8], t: &Translation, uid_search: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?;
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["*", "OK", code, ..] if code.starts_with("[UIDVALIDITY") => {
            Some(replace_number_after(text, "[UIDVALIDITY ", |_| {
                Some(t.primary_validity)
            }))
        }
        ["*", "OK", code, ..] if code.starts_with("[UIDNEXT") => {
            Some(replace_number_after(text, "[UIDNEXT ", |n| {
                Some(t.presented_uidnext(n))
            }))
        }
        [_, "OK", code, ..] if code.starts_with("[COPYUID") => copyuid(text, t),
        ["*", n, "FETCH", ..] if n.bytes().all(|b| b.is_ascii_digit()) => fetch(text, t),
        ["*", "SEARCH", ..] if uid_search => Some(search(text, t)),
        ["*", "SORT", ..] if uid_search => Some(each_number(text, "* SORT", |u| t.presented(u))),
        ["*", "THREAD", ..] if uid_search => {
            Some(each_number(text, "* THREAD", |u| t.presented(u)))
        }
        ["*", "VANISHED", ..] => vanished(text, t),
        ["*", "ESEARCH", ..] if upper.contains(" UID") => esearch(text, t),
        _ => None,
    }
}

/// `* STATUS mailbox (... UIDNEXT n UIDVALIDITY v ...)`: the mailbox's name, and the
/// line with the numbers the client knows when `translation_of` has a translation for it.
pub fn status_head(
    line: &[u8],
    translation_of: impl Fn(&str) -> Option<std::sync::Arc<Translation>>,
) -> Option<Vec<u8>> {
    use imap_codec::ResponseCodec;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::response::{Data, Response};
    let (_, response) = ResponseCodec::default().decode(line).ok()?;
    let Response::Data(Data::Status { mailbox, .. }) = response else {
        return None;
    };
    let t = translation_of(&super::identity::mailbox_name(&mailbox))?;
    let text = std::str::from_utf8(line).ok()?;
    let open = text.rfind('(')?;
    let (head, items) = text.split_at(open);
    let items = String::from_utf8(replace_number_after(items, "UIDVALIDITY ", |_| {
        Some(t.primary_validity)
    }))
    .ok()?;
    let items = String::from_utf8(replace_number_after(&items, "UIDNEXT ", |n| {
        Some(t.presented_uidnext(n))
    }))
    .ok()?;
    Some(format!("{head}{items}").into_bytes())
}

/// Replaces the number right after `marker` (matched case-insensitively).
fn replace_number_after(text: &str, marker: &str, map: impl Fn(u32) -> Option<u32>) -> Vec<u8> {
    let upper = text.to_ascii_uppercase();
    let Some(at) = upper.find(marker) else {
        return text.as_bytes().to_vec();
    };
    let start = at + marker.len();
    let end = start + text[start..].bytes().take_while(u8::is_ascii_digit).count();
    let Some(mapped) = text[start..end].parse().ok().and_then(map) else {
        return text.as_bytes().to_vec();
    };
    format!("{}{mapped}{}", &text[..start], &text[end..]).into_bytes()
}

/// `* n FETCH (... UID m ...)`: the UID item at the top level of the list.
fn fetch(text: &str, t: &Translation) -> Option<Vec<u8>> {
    let open = text.find('(')?;
    let bytes = text.as_bytes();
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        if quoted {
            match (escaped, b) {
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => escaped = false,
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth = depth.saturating_sub(1),
                _ if depth == 1
                    && matches!(bytes[i - 1], b'(' | b' ')
                    && bytes.len() - i > 4
                    && bytes[i..i + 4].eq_ignore_ascii_case(b"UID ") =>
                {
                    let start = i + 4;
                    let end = start + text[start..].bytes().take_while(u8::is_ascii_digit).count();
                    let uid = text[start..end].parse().ok()?;
                    let presented = t.presented(uid)?;
                    return Some(
                        format!("{}{presented}{}", &text[..start], &text[end..]).into_bytes(),
                    );
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// `* SEARCH 1 2 3 [(MODSEQ n)]`: each number is a UID.
fn search(text: &str, t: &Translation) -> Vec<u8> {
    let body = text.trim_end();
    let (list, modseq) = match body.find(" (") {
        Some(at) => (&body[..at], &body[at..]),
        None => (body, ""),
    };
    let mut out = String::from("* SEARCH");
    for word in list.split_ascii_whitespace().skip(2) {
        if let Some(presented) = word.parse().ok().and_then(|uid| t.presented(uid)) {
            out.push(' ');
            out.push_str(&presented.to_string());
        }
    }
    out.push_str(modseq);
    out.push_str("\r\n");
    out.into_bytes()
}

/// Every number after `prefix` mapped where it stands (`* SORT 3 1 2`, `* THREAD (2)(3 6
/// (4 23))`); a number `map` does not know is left as it is.
pub fn each_number(text: &str, prefix: &str, map: impl Fn(u32) -> Option<u32>) -> Vec<u8> {
    let (head, rest) = text.split_at(prefix.len().min(text.len()));
    let mut out = String::with_capacity(text.len());
    out.push_str(head);
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if !digits.is_empty() {
            match digits.parse().ok().and_then(&map) {
                Some(n) => out.push_str(&n.to_string()),
                None => out.push_str(digits),
            }
            digits.clear();
        }
    };
    for c in rest.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out.into_bytes()
}

/// `* VANISHED [(EARLIER)] set`.
fn vanished(text: &str, t: &Translation) -> Option<Vec<u8>> {
    let body = text.trim_end();
    let at = body.rfind(' ')?;
    let set = translate_set(&body[at + 1..], t)?;
    Some(format!("{} {set}\r\n", &body[..at]).into_bytes())
}

/// `a OK [COPYUID validity source-uids dest-uids] ...`: the source UIDs are this mailbox's.
fn copyuid(text: &str, t: &Translation) -> Option<Vec<u8>> {
    let upper = text.to_ascii_uppercase();
    let at = upper.find("[COPYUID ")? + "[COPYUID ".len();
    let rest = &text[at..];
    let mut parts = rest.splitn(3, ' ');
    let validity = parts.next()?;
    let source = parts.next()?;
    let tail = parts.next()?;
    let source = translate_in_order(source, t)?;
    Some(format!("{}{validity} {source} {tail}", &text[..at]).into_bytes())
}

/// A UID list whose order matters (COPYUID pairs its source and destination lists by
/// position): each UID translated where it stands.
fn translate_in_order(text: &str, t: &Translation) -> Option<String> {
    let set = SequenceSet::try_from(text).ok()?;
    let mut uids = Vec::new();
    for sequence in set.0.as_ref() {
        let (low, high) = match *sequence {
            Sequence::Single(SeqOrUid::Value(v)) => (v.get(), v.get()),
            Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)) => (a.get(), b.get()),
            // A server names the UIDs it copied; `*` has no place here.
            _ => return None,
        };
        let step: Box<dyn Iterator<Item = u32>> = if low <= high {
            Box::new(low..=high)
        } else {
            Box::new((high..=low).rev())
        };
        for uid in step {
            uids.push(t.presented(uid)?);
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut at = 0;
    while at < uids.len() {
        let start = uids[at];
        while at + 1 < uids.len() && uids[at + 1] == uids[at] + 1 {
            at += 1;
        }
        out.push(if uids[at] == start {
            start.to_string()
        } else {
            format!("{start}:{}", uids[at])
        });
        at += 1;
    }
    Some(out.join(","))
}

/// `* ESEARCH (TAG "a") UID ALL set MIN n MAX n COUNT n`. With ALL there, MIN and MAX
/// are the lowest and highest of its UIDs as the client knows them (the replica's lowest
/// need not be the client's).
fn esearch(text: &str, t: &Translation) -> Option<Vec<u8>> {
    let body = text.trim_end();
    let words: Vec<&str> = body.split(' ').collect();
    let all: Option<Vec<u32>> = words
        .windows(2)
        .find(|pair| pair[0].eq_ignore_ascii_case("ALL"))
        .and_then(|pair| SequenceSet::try_from(pair[1]).ok())
        .and_then(|set| super::seqmap::expand(&t.to_presented(&set), super::seqmap::MAX_LISTED));
    let mut out: Vec<String> = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        out.push(word.to_string());
        let upper = word.to_ascii_uppercase();
        if matches!(upper.as_str(), "ALL" | "MIN" | "MAX")
            && let Some(value) = words.next()
        {
            let from_all = match (upper.as_str(), &all) {
                ("MIN", Some(all)) => all.iter().min().map(u32::to_string),
                ("MAX", Some(all)) => all.iter().max().map(u32::to_string),
                _ => None,
            };
            out.push(
                from_all
                    .or_else(|| translate_set(value, t))
                    .unwrap_or_else(|| value.to_string()),
            );
        }
    }
    Some(format!("{}\r\n", out.join(" ")).into_bytes())
}

fn translate_set(text: &str, t: &Translation) -> Option<String> {
    let set = SequenceSet::try_from(text).ok()?;
    let presented = t.to_presented(&set);
    let command = Command::new(
        "x",
        CommandBody::ExpungeUid {
            sequence_set: presented,
        },
    )
    .ok()?;
    let line = CommandCodec::default().encode(&command).dump();
    let line = String::from_utf8(line).ok()?;
    Some(line.trim_end().rsplit(' ').next()?.to_string())
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
