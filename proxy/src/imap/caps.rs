//! The capability list a client sees: the IMAP server's, minus what would hide the stream
//! from levee or what levee cannot carry across a failover, plus levee's own TLS facts.
//!
//! - `COMPRESS=*` goes: compressed streams could not be read or migrated.
//! - `AUTH=*` other than `AUTH=PLAIN` goes: only LOGIN and PLAIN give levee what it needs to
//!   log the user in again on the replica.
//! - `STARTTLS` and `LOGINDISABLED` are levee's to say (it terminates TLS), not the
//!   upstream's, whose connection from levee is plain.

/// What levee knows of the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls {
    /// The connection is already encrypted.
    pub encrypted: bool,
    /// levee can offer STARTTLS.
    pub available: bool,
    /// Plaintext LOGIN is allowed anyway (`imap.allow_plaintext_auth`).
    pub plaintext_auth: bool,
}

impl ClientTls {
    /// Whether LOGIN / AUTHENTICATE may be used on this connection now.
    pub fn login_allowed(self) -> bool {
        self.encrypted || self.plaintext_auth
    }
}

/// Rewrites the capability list in a response head: `* CAPABILITY ...` or a
/// `[CAPABILITY ...]` response code. Other lines come back unchanged.
pub fn rewrite_head(line: &[u8], tls: ClientTls) -> Option<Vec<u8>> {
    // Every response head passes here: the common case costs one scan, no allocation.
    if !line
        .windows(b"CAPABILITY".len())
        .any(|w| w.eq_ignore_ascii_case(b"CAPABILITY"))
    {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let upper = text.to_ascii_uppercase();
    let (start, end) = if let Some(rest) = upper.strip_prefix("* CAPABILITY ") {
        let start = text.len() - rest.len();
        (start, text.trim_end_matches(['\r', '\n']).len())
    } else {
        let open = upper.find("[CAPABILITY ")?;
        let start = open + "[CAPABILITY ".len();
        let close = start + upper[start..].find(']')?;
        (start, close)
    };
    let list = filter(&text[start..end], tls);
    let mut out = String::with_capacity(text.len() + 24);
    out.push_str(&text[..start]);
    out.push_str(&list);
    out.push_str(&text[end..]);
    Some(out.into_bytes())
}

/// The filtered, space-separated list.
pub fn filter(list: &str, tls: ClientTls) -> String {
    let mut kept: Vec<&str> = list
        .split_ascii_whitespace()
        .filter(|cap| {
            let upper = cap.to_ascii_uppercase();
            !(upper.starts_with("COMPRESS=")
                || upper == "STARTTLS"
                || upper == "LOGINDISABLED"
                || (upper.starts_with("AUTH=") && upper != "AUTH=PLAIN")
                || (upper == "AUTH=PLAIN" && !tls.login_allowed()))
        })
        .collect();
    if !tls.encrypted && tls.available {
        kept.push("STARTTLS");
    }
    if !tls.login_allowed() {
        kept.push("LOGINDISABLED");
    }
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: ClientTls = ClientTls {
        encrypted: false,
        available: true,
        plaintext_auth: false,
    };
    const SECURE: ClientTls = ClientTls {
        encrypted: true,
        available: true,
        plaintext_auth: false,
    };

    fn rewrite(line: &str, tls: ClientTls) -> String {
        String::from_utf8(rewrite_head(line.as_bytes(), tls).unwrap()).unwrap()
    }

    #[test]
    fn greeting_before_tls_offers_starttls_and_disables_login() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN AUTH=SCRAM-SHA-256] Dovecot ready.\r\n";
        assert_eq!(
            rewrite(greeting, PLAIN),
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED] Dovecot ready.\r\n"
        );
        assert_eq!(
            rewrite(greeting, SECURE),
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
        );
    }

    #[test]
    fn compress_and_upstream_tls_words_go() {
        let line = "* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE IDLE MOVE\r\n";
        assert_eq!(
            rewrite(line, SECURE),
            "* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"
        );
        let tagged = "a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE QRESYNC] Logged in\r\n";
        assert_eq!(
            rewrite(tagged, SECURE),
            "a1 OK [CAPABILITY IMAP4rev1 QRESYNC] Logged in\r\n"
        );
    }

    #[test]
    fn other_lines_are_left_alone() {
        assert!(rewrite_head(b"* 3 EXISTS\r\n", SECURE).is_none());
        assert!(rewrite_head(b"a1 OK done\r\n", SECURE).is_none());
    }
}
