//! Client-side IMAP framing: the bytes a client sends, cut into whole messages (a command
//! with its literals, an AUTHENTICATE response line, IDLE's DONE) by imap-codec's
//! `Fragmentizer`, with levee's bounds on lines and literals.
//!
//! A synchronizing literal (`{n}`) needs a go-ahead before the client sends its bytes;
//! levee gives it itself once the size is within bounds and remembers where the literal
//! starts, so that the upstream can be fed the very same bytes later, waiting for the
//! upstream's own go-ahead at the same places ([`ClientMessage::sync_points`]).

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::core::LiteralMode;

/// One complete client message, byte for byte as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub bytes: Vec<u8>,
    /// Offsets in `bytes` where a synchronizing literal begins: the upstream must say
    /// "+" before the bytes from there on are sent.
    pub sync_points: Vec<usize>,
}

/// What the framer found in the client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Message(ClientMessage),
    /// A synchronizing literal within bounds was announced: the client waits for "+".
    GoAhead,
    /// A synchronizing literal over `max_literal`: refuse it; the client will not send
    /// the bytes and the message is dropped.
    LiteralRefused {
        tag: Option<String>,
        length: u32,
    },
    /// A message over the bounds whose bytes were consumed and dropped (a non-synchronizing
    /// literal over the limit): refuse the command.
    TooBig {
        tag: Option<String>,
    },
    /// A line longer than `max_line` and still going: the session cannot resynchronise.
    LineTooLong,
}

/// Frames one client's byte stream.
#[derive(Debug)]
pub struct ClientFramer {
    fragments: Fragmentizer,
    max_line: usize,
    max_literal: u32,
    /// Bytes handed to the fragmentizer since the last fragment it finished (an upper
    /// bound of the current line's length when a line is expected).
    since_fragment: usize,
    expecting_line: bool,
    sync_points: Vec<usize>,
    /// A line ran over: nothing after it can be framed reliably.
    broken: bool,
}

impl ClientFramer {
    pub fn new(max_line: usize, max_literal: u32) -> Self {
        // A message may hold a few literals and lines; past this it is dropped as too big.
        let max_message = max_literal.saturating_add((4 * max_line) as u32);
        ClientFramer {
            fragments: Fragmentizer::new(max_message),
            max_line,
            max_literal,
            since_fragment: 0,
            expecting_line: true,
            sync_points: Vec::new(),
            broken: false,
        }
    }

    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.since_fragment += bytes.len();
        self.fragments.enqueue_bytes(bytes);
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<ClientEvent> {
        if self.broken {
            return None;
        }
        loop {
            let Some(info) = self.fragments.progress() else {
                if self.expecting_line && self.since_fragment > self.max_line {
                    self.broken = true;
                    return Some(ClientEvent::LineTooLong);
                }
                return None;
            };
            self.since_fragment = 0;
            match info {
                FragmentInfo::Line {
                    end,
                    announcement: Some(LiteralAnnouncement { mode, length }),
                    ..
                } => {
                    self.expecting_line = false;
                    if length > self.max_literal {
                        let tag = self.tag();
                        if mode == LiteralMode::Sync {
                            self.fragments.skip_message();
                            self.sync_points.clear();
                            self.expecting_line = true;
                            return Some(ClientEvent::LiteralRefused { tag, length });
                        }
                        // The bytes come anyway: consume them, then refuse the command.
                        self.fragments.poison_message();
                        continue;
                    }
                    if mode == LiteralMode::Sync {
                        self.sync_points.push(end);
                        return Some(ClientEvent::GoAhead);
                    }
                }
                FragmentInfo::Literal { .. } => self.expecting_line = true,
                FragmentInfo::Line {
                    announcement: None, ..
                } => self.expecting_line = true,
            }
            if self.fragments.is_message_complete() {
                let sync_points = std::mem::take(&mut self.sync_points);
                if self.fragments.is_max_message_size_exceeded()
                    || self.fragments.is_message_poisoned()
                {
                    return Some(ClientEvent::TooBig { tag: self.tag() });
                }
                return Some(ClientEvent::Message(ClientMessage {
                    bytes: self.fragments.message_bytes().to_vec(),
                    sync_points,
                }));
            }
        }
    }

    /// The tag of the current message, when it starts with one.
    fn tag(&self) -> Option<String> {
        self.fragments
            .decode_tag()
            .map(|tag| tag.inner().to_string())
    }

    /// Whether bytes of an unfinished message are pending (the client is mid-command).
    pub fn mid_message(&self) -> bool {
        !self.fragments.message_bytes().is_empty() && !self.fragments.is_message_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(framer: &mut ClientFramer, bytes: &[u8]) -> Vec<ClientEvent> {
        framer.push(bytes);
        std::iter::from_fn(|| framer.next_event()).collect()
    }

    fn message(bytes: &[u8], sync_points: Vec<usize>) -> ClientEvent {
        ClientEvent::Message(ClientMessage {
            bytes: bytes.to_vec(),
            sync_points,
        })
    }

    #[test]
    fn commands_come_out_whole_and_unchanged() {
        let mut framer = ClientFramer::new(1024, 4096);
        let got = events(&mut framer, b"a1 NOOP\r\na2 SELECT \"INBOX\"\r\na3 FET");
        assert_eq!(
            got,
            vec![
                message(b"a1 NOOP\r\n", vec![]),
                message(b"a2 SELECT \"INBOX\"\r\n", vec![])
            ]
        );
        assert!(framer.mid_message());
        let got = events(&mut framer, b"CH 1 (FLAGS)\r\n");
        assert_eq!(got, vec![message(b"a3 FETCH 1 (FLAGS)\r\n", vec![])]);
    }

    #[test]
    fn synchronizing_literals_get_a_go_ahead_and_are_marked() {
        let mut framer = ClientFramer::new(1024, 4096);
        assert_eq!(
            events(&mut framer, b"a LOGIN {5}\r\n"),
            vec![ClientEvent::GoAhead]
        );
        assert_eq!(
            events(&mut framer, b"alice {3+}\r\npw!\r\n"),
            vec![message(b"a LOGIN {5}\r\nalice {3+}\r\npw!\r\n", vec![13])]
        );
    }

    #[test]
    fn literals_over_the_limit_are_refused_without_losing_the_stream() {
        let mut framer = ClientFramer::new(1024, 16);
        assert_eq!(
            events(&mut framer, b"a APPEND INBOX {100}\r\n"),
            vec![ClientEvent::LiteralRefused {
                tag: Some("a".into()),
                length: 100
            }]
        );
        // A non-synchronizing one arrives anyway: consumed, then refused as one.
        let mut bytes = b"b APPEND INBOX {20+}\r\n".to_vec();
        bytes.extend_from_slice(&[b'x'; 20]);
        bytes.extend_from_slice(b"\r\nc NOOP\r\n");
        assert_eq!(
            events(&mut framer, &bytes),
            vec![
                ClientEvent::TooBig {
                    tag: Some("b".into())
                },
                message(b"c NOOP\r\n", vec![])
            ]
        );
    }

    #[test]
    fn an_endless_line_is_cut_off() {
        let mut framer = ClientFramer::new(1024, 4096);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.extend(events(&mut framer, &[b'a'; 512]));
        }
        assert_eq!(got, vec![ClientEvent::LineTooLong]);
    }

    #[test]
    fn literal_bytes_never_count_as_lines() {
        let mut framer = ClientFramer::new(1024, 8192);
        let mut bytes = b"a APPEND INBOX {4000}\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'z', 4000));
        bytes.extend_from_slice(b"\r\n");
        let got = events(&mut framer, &bytes);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], ClientEvent::GoAhead);
        let ClientEvent::Message(m) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(m.bytes, bytes);
        assert_eq!(m.sync_points, vec![23]);
    }
}
