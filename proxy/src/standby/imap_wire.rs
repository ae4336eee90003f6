//! The server side of the duplicate check's IMAP conversation as bytes in, events out, and
//! the two argument encodings the client needs. No IO, so it is tested on input split
//! anywhere.
//!
//! Server bytes are split into messages (lines and literals) by imap-codec's
//! [`Fragmentizer`], which caps each message, and decoded by its codecs.

use base64::Engine as _;
use imap_codec::fragmentizer::{DecodeMessageError, Fragmentizer};
use imap_codec::imap_types::response::{Data, GreetingKind, Response, Status, StatusKind};
use imap_codec::{GreetingCodec, ResponseCodec};

/// Largest single server message (a line with its literals).
const MAX_MESSAGE: u32 = 64 * 1024;

/// One server message, as far as the check cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The greeting: `* OK` is the only one the check can use.
    Greeting { usable: bool, text: String },
    /// `+`: go on with the command (the SASL response).
    Continue,
    /// `* SEARCH` with its numbers.
    Search(Vec<u32>),
    /// The end of a command.
    Tagged { tag: String, ok: bool, text: String },
    /// `* BYE`.
    Bye(String),
    /// Any other untagged response (FLAGS, EXISTS, CAPABILITY, ...).
    Other,
}

/// Server bytes in, [`Event`]s out. No IO.
#[derive(Debug)]
pub(crate) struct Responses {
    fragmentizer: Fragmentizer,
    greeted: bool,
}

impl Responses {
    pub fn new() -> Responses {
        Responses {
            fragmentizer: Fragmentizer::new(MAX_MESSAGE),
            greeted: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.fragmentizer.enqueue_bytes(bytes);
    }

    /// The next complete message, `None` when more bytes are needed.
    pub fn next(&mut self) -> Option<Result<Event, String>> {
        loop {
            self.fragmentizer.progress()?;
            if self.fragmentizer.is_message_complete() {
                return Some(self.decode());
            }
        }
    }

    fn decode(&mut self) -> Result<Event, String> {
        if self.fragmentizer.is_max_message_size_exceeded() {
            return Err(format!("a response longer than {MAX_MESSAGE} bytes"));
        }
        if !self.greeted {
            self.greeted = true;
            return match self.fragmentizer.decode_message(&GreetingCodec::default()) {
                Ok(greeting) => Ok(Event::Greeting {
                    usable: greeting.kind == GreetingKind::Ok,
                    text: greeting.text.inner().to_string(),
                }),
                Err(_) => Err("malformed greeting".into()),
            };
        }
        let bytes = self.fragmentizer.message_bytes();
        let response = match self.fragmentizer.decode_message(&ResponseCodec::default()) {
            Ok(response) => response,
            Err(DecodeMessageError::DecodingRemainder { message, .. }) => message,
            Err(_) => {
                // An untagged response this decoder does not know cannot change the check's
                // answer, unless it is the one carrying that answer.
                let untagged = bytes.starts_with(b"* ");
                let search = bytes
                    .get(..9)
                    .is_some_and(|b| b.eq_ignore_ascii_case(b"* SEARCH "))
                    || bytes
                        .get(..10)
                        .is_some_and(|b| b.eq_ignore_ascii_case(b"* SEARCH\r\n"));
                if untagged && !search {
                    return Ok(Event::Other);
                }
                return Err(format!("undecodable response {:?}", line_of(bytes)));
            }
        };
        Ok(match response {
            Response::CommandContinuationRequest(_) => Event::Continue,
            Response::Data(Data::Search(numbers, ..)) => {
                Event::Search(numbers.into_iter().map(|n| n.get()).collect())
            }
            Response::Data(_) => Event::Other,
            Response::Status(Status::Tagged(tagged)) => Event::Tagged {
                tag: tagged.tag.inner().to_string(),
                ok: tagged.body.kind == StatusKind::Ok,
                text: tagged.body.text.inner().to_string(),
            },
            Response::Status(Status::Bye(bye)) => Event::Bye(bye.text.inner().to_string()),
            Response::Status(Status::Untagged(_)) => Event::Other,
        })
    }
}

/// The first line of a message, for error text (bounded).
fn line_of(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len())
        .min(200);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `s` as an IMAP quoted string; `None` for what needs a literal (CR, LF, NUL, 8-bit).
pub(crate) fn quoted(s: &str) -> Option<String> {
    if s.bytes()
        .any(|b| !(0x01..=0x7f).contains(&b) || b == b'\r' || b == b'\n')
    {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(out)
}

/// The SASL PLAIN response (RFC 4616): `authzid NUL authcid NUL password`, base64.
pub(crate) fn plain_response(authzid: &str, authcid: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(authzid.len() + authcid.len() + password.len() + 2);
    raw.extend_from_slice(authzid.as_bytes());
    raw.push(0);
    raw.extend_from_slice(authcid.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects every event.
    fn events(input: &[u8], step: usize) -> Vec<Result<Event, String>> {
        let mut responses = Responses::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            responses.push(piece);
            while let Some(event) = responses.next() {
                out.push(event);
            }
        }
        out
    }

    const SESSION: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n\
        +\x20\r\n\
        L1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n\
        * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
        * OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n\
        * 3 EXISTS\r\n\
        * 0 RECENT\r\n\
        * OK [UIDVALIDITY 1700000000] UIDs valid\r\n\
        * OK [UIDNEXT 4] Predicted next UID\r\n\
        * OK [HIGHESTMODSEQ 5] Highest\r\n\
        L2 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n\
        * SEARCH 2 7\r\n\
        L3 OK Search completed (0.001 + 0.000 secs).\r\n\
        * BYE Logging out\r\n\
        L4 OK Logout completed.\r\n";

    #[test]
    fn a_dovecot_session_decodes_the_same_however_it_is_split() {
        let whole = events(SESSION, SESSION.len());
        assert_eq!(whole.len(), 15, "{whole:?}");
        assert_eq!(
            whole[0],
            Ok(Event::Greeting {
                usable: true,
                text: "Dovecot ready.".into()
            })
        );
        assert_eq!(whole[1], Ok(Event::Continue));
        assert!(matches!(&whole[2], Ok(Event::Tagged { tag, ok: true, .. }) if tag == "L1"));
        assert!(
            whole[3..10].iter().all(|e| e == &Ok(Event::Other)),
            "{whole:?}"
        );
        assert!(matches!(&whole[10], Ok(Event::Tagged { tag, ok: true, .. }) if tag == "L2"));
        assert_eq!(whole[11], Ok(Event::Search(vec![2, 7])));
        assert_eq!(whole[13], Ok(Event::Bye("Logging out".into())));
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(events(SESSION, step), whole, "split every {step} bytes");
        }
    }

    #[test]
    fn an_empty_search_and_a_refusal() {
        let input = b"* OK hi\r\n* SEARCH\r\nL3 OK done\r\nL4 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";
        let got = events(input, 5);
        assert_eq!(got[1], Ok(Event::Search(vec![])));
        assert_eq!(
            got[3],
            Ok(Event::Tagged {
                tag: "L4".into(),
                ok: false,
                text: "Authentication failed.".into()
            })
        );
    }

    #[test]
    fn a_search_result_that_does_not_decode_is_an_error_not_an_empty_answer() {
        let got = events(b"* OK hi\r\n* SEARCH 1 x 2\r\n* WEIRD stuff\r\n", 4);
        assert!(got[1].is_err(), "{got:?}");
        assert_eq!(got[2], Ok(Event::Other));
    }

    #[test]
    fn literals_are_read_whole_and_oversized_messages_refused() {
        let got = events(
            b"* OK hi\r\n* 1 FETCH (BODY[] {5}\r\nL9 OK)\r\nL1 OK x\r\n",
            3,
        );
        assert_eq!(got[1], Ok(Event::Other), "{got:?}");
        assert!(matches!(&got[2], Ok(Event::Tagged { tag, .. }) if tag == "L1"));
        let mut huge = b"* OK hi\r\n* OK ".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_MESSAGE as usize));
        huge.extend_from_slice(b"\r\nL1 OK x\r\n");
        let got = events(&huge, 4096);
        assert!(got[1].is_err(), "{:?}", got[1]);
        assert!(matches!(&got[2], Ok(Event::Tagged { tag, .. }) if tag == "L1"));
    }

    #[test]
    fn greetings_other_than_ok_are_not_usable() {
        let got = events(b"* BYE too busy\r\n", 100);
        assert!(matches!(&got[0], Ok(Event::Greeting { usable: false, .. })));
        let got = events(b"* PREAUTH welcome\r\n", 100);
        assert!(matches!(&got[0], Ok(Event::Greeting { usable: false, .. })));
    }

    #[test]
    fn quoting_escapes_and_refuses_what_needs_a_literal() {
        assert_eq!(quoted("L12.00ff").as_deref(), Some("\"L12.00ff\""));
        assert_eq!(quoted("a\"b\\c").as_deref(), Some("\"a\\\"b\\\\c\""));
        assert_eq!(quoted("line\r\nbreak"), None);
        assert_eq!(quoted("gr\u{fc}n"), None);
        assert_eq!(quoted("nul\0"), None);
    }

    #[test]
    fn plain_response_is_authzid_authcid_password() {
        let encoded = plain_response("alice@example.test", "master", "pw");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(raw, b"alice@example.test\0master\0pw");
    }
}
