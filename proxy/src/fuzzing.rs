//! Entry points for the fuzz targets (`fuzz/`) and for the corpus test that replays their
//! inputs on every test run: each takes arbitrary bytes, drives one part of levee that
//! reads what a peer sent, and panics only when an invariant of that part breaks (a line
//! or message over its bound handed on, a rewrite that loses a command's tag, a frame
//! that does not survive a round trip). Not an API.

use std::time::Duration;

use imap_codec::decode::Decoder;
use imap_codec::{CommandCodec, encode::Encoder};
use smtp_proto::Request;

use crate::imap::framing::{ClientEvent, ClientFramer};
use crate::imap::identity::{Identity, Known};
use crate::imap::modseq::{self, STEP, Shift};
use crate::imap::responses::{Piece, ResponseScanner, literal_announced};
use crate::imap::seqmap::{SeqMap, listed_uids};
use crate::imap::state::{SessionState, tagged_status};
use crate::imap::uidmap::{Catalogue, Translation};
use crate::imap::{changes, rewrite, search_return};
use crate::smtp::connection::{Body, Connection, Line};

const SMTP_MAX_LINE: usize = 512;
const SMTP_MAX_BODY: u64 = 16 * 1024;
const IMAP_MAX_LINE: usize = 1024;
const IMAP_MAX_LITERAL: u32 = 4096;

/// Splits `data` into the chunks a peer's writes would arrive in: the first byte sets the
/// chunk size, so the fuzzer explores reads that cut lines and literals anywhere.
fn chunks(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => (usize::from(n % 64) + 1, rest),
        None => (1, data),
    }
}

/// A client's bytes on an SMTP connection: command lines (bounded), each parsed as levee
/// parses it, the envelope helpers levee applies to MAIL/RCPT lines and AUTH responses,
/// and after `DATA` a body (bounded, dot-unstuffed).
pub fn smtp_input(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let stream = tokio::io::join(data, tokio::io::sink());
        let mut conn = Connection::new(stream);
        let idle = Duration::from_secs(1);
        while let Ok(line) = conn.read_line(SMTP_MAX_LINE, idle).await {
            let Line::Complete(line) = line else {
                continue;
            };
            assert!(
                line.len() <= SMTP_MAX_LINE,
                "an over-long line was handed on"
            );
            let grown = crate::smtp::envelope::grow_declared_size(&line, 100);
            assert!(grown.len() <= line.len() + 24);
            if let Ok(text) = std::str::from_utf8(&line) {
                let _ = crate::smtp::auth::plain_login(text.trim_end());
                let _ = crate::smtp::envelope::is_local(&["example.org".into()], text);
            }
            if let Ok(Request::Data) = Request::parse(&mut line.iter()) {
                match conn.read_body(SMTP_MAX_BODY, idle).await {
                    Ok(Body::Complete(body)) => {
                        assert!(body.len() as u64 <= SMTP_MAX_BODY);
                        let _ = crate::smtp::message_id(&body);
                    }
                    Ok(Body::TooBig) => {}
                    Err(_) => break,
                }
            }
        }
    });
}

/// A mailbox whose messages the replica stores in another order and with other UIDs, so
/// that rewriting UIDs and message numbers is never the identity.
fn translation() -> (Translation, SeqMap) {
    let known = |uid: u32, name: &str| Known {
        uid,
        identity: Identity {
            trace: Some(format!("L{name}.0011223344556677")),
            message_id: None,
            size: 100,
        },
        flags: Vec::new(),
    };
    let primary = Catalogue {
        uidvalidity: 1111,
        uidnext: 9,
        messages: [(3, "a"), (5, "b"), (8, "c")]
            .into_iter()
            .map(|(uid, name)| (uid, known(uid, name)))
            .collect(),
    };
    let replica = [known(1, "c"), known(2, "a"), known(4, "b"), known(6, "new")];
    let t = Translation::build(&primary, &replica, 2222).expect("a translation");
    let seq = SeqMap::new(&t, &[1, 2, 4, 6], 4).expect("orders differ");
    (t, seq)
}

/// A client's bytes on an IMAP connection: framed with levee's bounds, each message
/// decoded as a command, tracked in a session's state, checked for what it changes, and
/// rewritten into the replica's UIDs, message numbers and mod-sequences (a SEARCH with
/// RETURN options, which does not decode, split and joined again).
pub fn imap_client(data: &[u8]) {
    let (step, data) = chunks(data);
    let (t, seq) = translation();
    let mut framer = ClientFramer::new(IMAP_MAX_LINE, IMAP_MAX_LITERAL);
    let mut state = SessionState::default();
    for chunk in data.chunks(step) {
        framer.push(chunk);
        while let Some(event) = framer.next_event() {
            let ClientEvent::Message(message) = event else {
                if event == ClientEvent::LineTooLong {
                    return;
                }
                continue;
            };
            assert!(message.bytes.len() <= IMAP_MAX_LINE * 8 + IMAP_MAX_LITERAL as usize * 4);
            assert!(
                message
                    .sync_points
                    .iter()
                    .all(|&at| at <= message.bytes.len())
            );
            let Ok((_, command)) = CommandCodec::default().decode(&message.bytes) else {
                state.opaque_sent(None);
                state.auth_line_sent(&message.bytes);
                if let Some(split) = search_return::split(&message) {
                    let plain = &split.plain;
                    assert!(plain.sync_points.iter().all(|&at| at <= plain.bytes.len()));
                    let joined = search_return::join(split.plain.clone(), &split.options);
                    assert!(
                        joined
                            .sync_points
                            .iter()
                            .all(|&at| at <= joined.bytes.len())
                    );
                    let _ = search_return::with_all(&split.options);
                }
                continue;
            };
            state.command_sent(&command);
            let _ = changes::change_of(&command);
            let _ = changes::replayable(&command);
            for map in [None, Some(&seq)] {
                if let Some(rewritten) = rewrite::command(&command, &t, map) {
                    let (_, again) = CommandCodec::default()
                        .decode(&rewritten.bytes)
                        .expect("a rewritten command decodes");
                    assert_eq!(again.tag, command.tag, "a rewrite changed the tag");
                }
            }
            let _ = CommandCodec::default().encode(&command).dump();
            let mut shifted = command.clone();
            let mut qresync = command.clone();
            let changed =
                modseq::command(&mut shifted, Shift(STEP)) | rewrite::qresync(&mut qresync, &t);
            if changed {
                for changed in [shifted, qresync] {
                    let bytes = rewrite::encode(&changed).bytes;
                    let (_, again) = CommandCodec::default()
                        .decode(&bytes)
                        .expect("a command with its mod-sequences lowered decodes");
                    assert_eq!(again.tag, command.tag);
                }
            }
        }
    }
}

/// An IMAP server's bytes: cut into response heads and pass-through pieces, every head
/// read for a tagged status, a literal, a listing of UIDs, and rewritten into the client's
/// UIDs, message numbers and mod-sequences.
pub fn imap_server(data: &[u8]) {
    let (step, data) = chunks(data);
    let (t, mut seq) = translation();
    let mut scanner = ResponseScanner::default();
    let mut total = 0usize;
    for chunk in data.chunks(step) {
        scanner.push(chunk);
        while let Some(piece) = scanner.next_piece() {
            let head = match piece {
                Piece::Head(head) => head,
                Piece::Raw(raw) => {
                    total += raw.len();
                    continue;
                }
            };
            total += head.len();
            let _ = tagged_status(&head);
            let _ = literal_announced(&head);
            let _ = listed_uids(&head, "levee.list");
            let _ = rewrite::response_head(&head, &t, head.len() % 2 == 0);
            let _ = seq.response_head(&head, head.len() % 3 == 0);
            let _ = modseq::response_head(&head, Shift(STEP));
            let _ = search_return::without_all(&head, "a");
        }
        scanner.compact();
    }
    assert!(total <= data.len(), "the scanner made up bytes");
}

/// A replication frame as the other site sent it (length prefix already taken): decoded,
/// and if it is a frame, encoded again to the same frame.
pub fn replication_frame(data: &[u8]) {
    use levee_replica::frame;
    if let Ok(decoded) = frame::decode(data)
        && let Ok(encoded) = frame::encode(&decoded)
    {
        assert_eq!(
            frame::decode(&encoded).ok(),
            Some(decoded),
            "a frame did not survive a round trip"
        );
    }
}

/// A stored journal record value.
pub fn journal_record(data: &[u8]) {
    levee_journal::fuzzing::record(data);
}

/// A configuration file, for `levee run` and for `levee replica`: accepted or refused
/// with problems, never a panic.
pub fn config(data: &[u8]) {
    use levee_config::ConfigFile;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = levee_config::Config::from_toml(text) {
        assert!(!err.to_string().is_empty());
    }
    let _ = levee_config::ReplicaConfig::from_toml(text);
}
