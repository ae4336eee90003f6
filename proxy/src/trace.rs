//! The trace header that names a message's journal record on every copy levee hands on.
//!
//! Both sites' copies of one message carry the same id, `L<seq>.<first 8 chain bytes hex>`:
//! at the primary in the `Received:` line levee puts above the client's bytes when it hands
//! the message to a mail server (live or from the delivery worker), at the replica in the
//! applier's own line. That id is what pairs the two copies (UID continuity), and what the
//! applier searches for before it delivers a record a second time.
//!
//! The journal keeps the client's bytes unchanged; the header exists only on the wire. It
//! is a valid RFC 5322 field of at most three lines, each far below 998 bytes: the names
//! in it are cut to [`MAX_NAME`] bytes of a conservative character set.

use std::net::SocketAddr;

use levee_journal::{ClientInfo, Seq};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Longest HELO name or host name written into a header (a DNS name is at most 253).
pub const MAX_NAME: usize = 255;

/// The id of the copies of one record: its seq, and the first 8 bytes of its chain hash,
/// which name the primary journal it came from (a rebuilt primary starts another chain).
pub fn trace_id(seq: Seq, chain: &[u8; 32]) -> String {
    let mut id = format!("L{seq}.");
    for byte in &chain[..8] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// `Received: by <hostname> (levee apply) with <protocol> id <id>; <date>` and CRLF: the one
/// line the replica's applier puts above the client's bytes.
pub fn received_header(hostname: &str, protocol: &str, id: &str, now: OffsetDateTime) -> String {
    format!(
        "Received: by {} (levee apply) with {protocol} id {id}; {}\r\n",
        clean_name(hostname),
        date(now)
    )
}

/// The header levee puts above the client's bytes when it hands a message to a mail
/// server, folded like an MTA's own:
///
/// ```text
/// Received: from <helo> ([<client ip>])
///         by <hostname> (levee) with ESMTPSA id L<seq>.<hex>;
///         <RFC 2822 date of acceptance>
/// ```
///
/// The protocol follows RFC 3848 (`S` after TLS, `A` after AUTH). Everything in it comes
/// from the journal record, so a retry writes the same line as the live path.
pub fn smtp_received(hostname: &str, client: &ClientInfo, id: &str, accepted_ms: u64) -> String {
    let helo = client
        .helo
        .as_deref()
        .map(clean_name)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let addr = client_literal(client.addr.as_deref());
    let protocol = protocol(client.tls, client.authenticated_user.is_some());
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(accepted_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "Received: from {helo} ({addr})\r\n\tby {} (levee) with {protocol} id {id};\r\n\t{}\r\n",
        clean_name(hostname),
        date(at)
    )
}

/// The most bytes [`smtp_received`] can write for this client and host name, whatever the
/// record's seq and date: what a declared message size (`SIZE=`) must grow by.
pub fn smtp_received_bound(hostname: &str, client: &ClientInfo) -> usize {
    let worst = ClientInfo {
        tls: true,
        authenticated_user: Some(String::new()),
        ..client.clone()
    };
    let id = trace_id(Seq::MAX, &[0xff; 32]);
    // A two-digit day: the longest date there is before the year 10000.
    let date_ms = 1_700_000_000_000;
    smtp_received(hostname, &worst, &id, date_ms).len()
}

/// `ESMTP`, `ESMTPS`, `ESMTPA` or `ESMTPSA` (RFC 3848).
pub fn protocol(tls: bool, authenticated: bool) -> &'static str {
    match (tls, authenticated) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    }
}

fn date(at: OffsetDateTime) -> String {
    at.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

/// A name as it may stand in a header: letters, digits and `.-_:[]`, anything else as
/// `_`, at most [`MAX_NAME`] bytes. A client chooses its HELO name; it must not be able to
/// close the comment, start a new field or make the line overlong.
fn clean_name(name: &str) -> String {
    name.chars()
        .take(MAX_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 address literals) from the journal's
/// `ip:port`; `unknown` without one.
fn client_literal(addr: Option<&str>) -> String {
    match addr.map(str::parse::<SocketAddr>) {
        Some(Ok(SocketAddr::V4(addr))) => format!("[{}]", addr.ip()),
        Some(Ok(SocketAddr::V6(addr))) => format!("[IPv6:{}]", addr.ip()),
        Some(Err(_)) => clean_name(addr.unwrap_or_default()),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(helo: &str, tls: bool, user: Option<&str>) -> ClientInfo {
        ClientInfo {
            addr: Some("192.0.2.7:4242".into()),
            helo: Some(helo.into()),
            authenticated_user: user.map(str::to_string),
            listener: "relay@127.0.0.1:25".into(),
            tls,
        }
    }

    #[test]
    fn trace_id_is_seq_and_chain_prefix() {
        let mut chain = [0u8; 32];
        chain[..8].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        chain[8] = 0xff;
        assert_eq!(trace_id(42, &chain), "L42.0123456789abcdef");
        // Same seq, another primary journal: another id.
        chain[0] = 0x02;
        assert_ne!(trace_id(42, &chain), "L42.0123456789abcdef");
    }

    #[test]
    fn applier_header_is_one_rfc5322_line() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let header = received_header("standby.example", "LMTP", "L7.00ff00ff00ff00ff", now);
        assert_eq!(
            header,
            "Received: by standby.example (levee apply) with LMTP id L7.00ff00ff00ff00ff; \
             Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert!(header.len() < 998);
        assert_eq!(header.matches("\r\n").count(), 1);
    }

    #[test]
    fn smtp_header_names_client_levee_protocol_and_record() {
        let header = smtp_received(
            "mx.example.org",
            &client("client.example", true, Some("alice")),
            "L7.00ff00ff00ff00ff",
            1_700_000_000_123,
        );
        assert_eq!(
            header,
            "Received: from client.example ([192.0.2.7])\r\n\
             \tby mx.example.org (levee) with ESMTPSA id L7.00ff00ff00ff00ff;\r\n\
             \tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        let plain = smtp_received("mx", &client("c", false, None), "L1.00", 0);
        assert!(plain.contains(" with ESMTP id L1.00;"), "{plain}");
        assert!(
            plain.ends_with("\tThu, 01 Jan 1970 00:00:00 +0000\r\n"),
            "{plain}"
        );
        let mut v6 = client("c", true, None);
        v6.addr = Some("[2001:db8::1]:25".into());
        let header = smtp_received("mx", &v6, "L1.00", 0);
        assert!(header.starts_with("Received: from c ([IPv6:2001:db8::1])\r\n"));
        assert!(header.contains(" with ESMTPS id"));
    }

    #[test]
    fn a_hostile_helo_cannot_break_the_header() {
        let evil = format!("x)\r\nBcc: victim@example.org\r\n({}", "y".repeat(5000));
        let header = smtp_received("mx", &client(&evil, false, None), "L1.00", 0);
        assert_eq!(header.matches("\r\n").count(), 3, "{header}");
        for line in header.split("\r\n") {
            assert!(line.len() < 998, "line of {} bytes", line.len());
            assert!(line.is_ascii());
        }
        assert!(!header.contains("\r\nBcc"));
        assert_eq!(header.matches('(').count(), 2);
        let empty = smtp_received("mx", &client("", false, None), "L1.00", 0);
        assert!(empty.starts_with("Received: from unknown ("), "{empty}");
    }

    #[test]
    fn the_bound_covers_every_seq_date_and_protocol() {
        let plain = client("client.example", false, None);
        let bound = smtp_received_bound("mx.example.org", &plain);
        for (seq, ms) in [
            (1, 0),
            (Seq::MAX, 1_700_000_000_000),
            (99, 253_402_300_799_000),
        ] {
            for (tls, user) in [(false, None), (true, Some("a-long-login-name"))] {
                let client = client("client.example", tls, user);
                let header = smtp_received("mx.example.org", &client, &trace_id(seq, &[7; 32]), ms);
                assert!(
                    header.len() <= bound,
                    "{} > {bound}: {header}",
                    header.len()
                );
            }
        }
    }
}
