//! SMTP replies levee speaks in its own name, and replies relayed from the upstream.
//!
//! Replies that levee decides carry an enhanced status code (RFC 3463) and a text that
//! says which side failed; the upstream's verdicts are forwarded byte for byte so that the
//! client reads exactly what the mail server said.

use std::borrow::Cow;
use std::io::Write;

use smtp_proto::Response;

/// One reply to the client: either levee's own, or the upstream's raw lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Own {
        code: u16,
        esc: [u8; 3],
        text: Cow<'static, str>,
    },
    /// Complete reply lines exactly as the upstream sent them (CRLF terminated).
    Relayed { code: u16, raw: Vec<u8> },
}

impl Reply {
    pub const fn own(code: u16, esc: [u8; 3], text: &'static str) -> Reply {
        Reply::Own {
            code,
            esc,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, esc: [u8; 3], text: String) -> Reply {
        Reply::Own {
            code,
            esc,
            text: Cow::Owned(text),
        }
    }

    pub fn code(&self) -> u16 {
        match self {
            Reply::Own { code, .. } | Reply::Relayed { code, .. } => *code,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code())
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Own { code, esc, text } if esc[0] == 0 => {
                let _ = write!(out, "{code} {text}\r\n");
            }
            Reply::Own { code, esc, text } => {
                let response = Response {
                    code: *code,
                    esc: *esc,
                    message: text.as_ref(),
                };
                // Writing into a Vec cannot fail.
                let _ = response.write(&mut *out);
            }
            Reply::Relayed { raw, .. } => {
                out.extend_from_slice(raw);
            }
        }
    }

    /// Human-readable single line, for logs and delivery state (never holds client data
    /// beyond what the server echoed).
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        let text = String::from_utf8_lossy(&out);
        text.lines().collect::<Vec<_>>().join(" / ")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

pub const OK: Reply = Reply::own(250, [2, 0, 0], "Ok");
pub const SWITCHING: Reply = Reply::own(
    451,
    [4, 3, 0],
    "Switching mail sites, try again in a minute",
);
pub const BYE: Reply = Reply::own(221, [2, 0, 0], "Bye");
pub const START_DATA: Reply = Reply::own(354, [0, 0, 0], "End data with <CR><LF>.<CR><LF>");
pub const READY_TLS: Reply = Reply::own(220, [2, 0, 0], "Ready to start TLS");
pub const SYNTAX: Reply = Reply::own(500, [5, 5, 2], "Syntax error, command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::own(500, [5, 5, 2], "Line too long");
pub const NOT_IMPLEMENTED: Reply = Reply::own(502, [5, 5, 1], "Command not implemented");
pub const NEED_HELO: Reply = Reply::own(503, [5, 5, 1], "Send EHLO or HELO first");
pub const NEED_MAIL: Reply = Reply::own(503, [5, 5, 1], "Send MAIL FROM first");
pub const NESTED_MAIL: Reply = Reply::own(503, [5, 5, 1], "Nested MAIL command");
pub const NEED_RCPT: Reply = Reply::own(554, [5, 5, 1], "No valid recipients");
pub const TOO_MANY_RCPTS: Reply = Reply::own(452, [4, 5, 3], "Too many recipients");
pub const TOO_BIG: Reply = Reply::own(552, [5, 3, 4], "Message size exceeds fixed limit");
pub const NO_TLS: Reply = Reply::own(502, [5, 5, 1], "STARTTLS not available");
pub const PIPELINED_TLS: Reply = Reply::own(
    554,
    [5, 5, 1],
    "Commands pipelined after STARTTLS; closing the connection",
);
pub const TLS_REQUIRED: Reply = Reply::own(
    530,
    [5, 7, 0],
    "Must issue a STARTTLS command first to authenticate",
);
pub const AUTH_UNAVAILABLE: Reply = Reply::own(502, [5, 5, 1], "AUTH not available");
pub const AUTH_TEMP: Reply = Reply::own(
    454,
    [4, 7, 0],
    "Temporary authentication failure: mail server unreachable",
);
pub const ALREADY_AUTH: Reply = Reply::own(503, [5, 5, 1], "Already authenticated");
pub const AUTH_IN_TX: Reply = Reply::own(503, [5, 5, 1], "AUTH not allowed during a transaction");
pub const VRFY: Reply = Reply::own(
    252,
    [2, 5, 0],
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = Reply::own(214, [2, 0, 0], "See RFC 5321");
pub const RELAY_DENIED: Reply = Reply::own(
    550,
    [5, 7, 1],
    "Relay access denied (mail server unreachable; only local domains are accepted)",
);
pub const SUBMISSION_DOWN: Reply = Reply::own(
    421,
    [4, 3, 0],
    "Mail server unreachable, cannot check credentials; try again later",
);
pub const UPSTREAM_LOST: Reply = Reply::own(
    451,
    [4, 4, 1],
    "Mail server connection lost; try again later",
);
pub const STORAGE_FULL: Reply = Reply::own(
    452,
    [4, 3, 1],
    "Insufficient system storage; message not accepted",
);
pub const LOCAL_ERROR: Reply = Reply::own(
    451,
    [4, 3, 0],
    "Local error in processing; message not accepted",
);
pub const TOO_MANY_ERRORS: Reply = Reply::own(421, [4, 7, 0], "Too many errors; closing");
pub const TIMEOUT: Reply = Reply::own(421, [4, 4, 2], "Timeout exceeded; closing");
pub const SHUTDOWN: Reply = Reply::own(421, [4, 3, 2], "Service shutting down; try again later");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_reply_has_enhanced_code() {
        let mut out = Vec::new();
        TOO_BIG.write_to(&mut out);
        assert_eq!(out, b"552 5.3.4 Message size exceeds fixed limit\r\n");
    }

    #[test]
    fn relayed_reply_is_verbatim() {
        let raw = b"550-5.1.1 <x@y>: Recipient\r\n550 5.1.1 address rejected\r\n".to_vec();
        let reply = Reply::Relayed {
            code: 550,
            raw: raw.clone(),
        };
        let mut out = Vec::new();
        reply.write_to(&mut out);
        assert_eq!(out, raw);
        assert_eq!(
            reply.summary(),
            "550-5.1.1 <x@y>: Recipient / 550 5.1.1 address rejected"
        );
    }
}
