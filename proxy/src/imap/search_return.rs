//! SEARCH with RETURN options (ESEARCH, RFC 4731), which imap-codec does not decode: the
//! options are taken out so that the rest decodes as a plain SEARCH (and is translated
//! like one), then put back in the command levee sends.
//!
//! MIN and MAX name the lowest and highest match in the server's order. Where the client's
//! order differs (message numbers under a [`super::seqmap::SeqMap`], UIDs under a
//! translation that does not keep their order), they cannot be mapped one by one: levee
//! asks for ALL as well, takes MIN and MAX from the mapped set, and leaves ALL out of the
//! answer when the client did not ask for it. Pure: no IO.

use super::framing::ClientMessage;

/// A SEARCH command with its RETURN options cut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The command without them.
    pub plain: ClientMessage,
    /// The options, as the client wrote them (`RETURN (MIN MAX)`).
    pub options: String,
}

/// `tag [UID] SEARCH RETURN (...) rest` without its RETURN options, or `None` when the
/// message is not a SEARCH with them.
pub fn split(message: &ClientMessage) -> Option<Split> {
    let bytes = &message.bytes;
    let at = search_end(bytes)?;
    let rest = &bytes[at..];
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"RETURN ") {
        return None;
    }
    let open = at + 7;
    if bytes.get(open) != Some(&b'(') {
        return None;
    }
    let close = open + bytes[open..].iter().position(|&b| b == b')')?;
    let options = std::str::from_utf8(&bytes[at..=close]).ok()?.to_string();
    // The options and the space after them; options on more than one line (a literal
    // among them) are not options levee reads.
    let cut = close + 1 - at + usize::from(bytes.get(close + 1) == Some(&b' '));
    if options.contains(['\r', '\n'])
        || message.sync_points.iter().any(|&p| p > at && p <= at + cut)
    {
        return None;
    }
    let mut plain = bytes[..at].to_vec();
    plain.extend_from_slice(&bytes[at + cut..]);
    let sync_points = message
        .sync_points
        .iter()
        .map(|&p| if p > at { p - cut } else { p })
        .collect();
    Some(Split {
        plain: ClientMessage {
            bytes: plain,
            sync_points,
        },
        options,
    })
}

/// `encoded` (a plain SEARCH) with `options` put back where they stand.
pub fn join(encoded: ClientMessage, options: &str) -> ClientMessage {
    let Some(at) = search_end(&encoded.bytes) else {
        return encoded;
    };
    let insert = format!("{options} ");
    let mut bytes = encoded.bytes[..at].to_vec();
    bytes.extend_from_slice(insert.as_bytes());
    bytes.extend_from_slice(&encoded.bytes[at..]);
    let sync_points = encoded
        .sync_points
        .iter()
        .map(|&p| if p >= at { p + insert.len() } else { p })
        .collect();
    ClientMessage { bytes, sync_points }
}

/// Options that ask for MIN or MAX without ALL, with ALL added; `None` when they need
/// nothing added (an empty list means ALL already).
pub fn with_all(options: &str) -> Option<String> {
    let inner = options.get(options.find('(')? + 1..options.rfind(')')?)?;
    let words: Vec<String> = inner
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let needs = words.iter().any(|w| w == "MIN" || w == "MAX");
    (needs && !words.iter().any(|w| w == "ALL")).then(|| format!("RETURN ({inner} ALL)"))
}

/// The `* ESEARCH (TAG "tag") ...` answer without its `ALL set`, for a client that did
/// not ask for it; `None` when `line` is not that answer.
pub fn without_all(line: &[u8], tag: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let ours = format!("* ESEARCH (TAG \"{tag}\")");
    let head = text.as_bytes().get(..ours.len())?;
    if !head.eq_ignore_ascii_case(ours.as_bytes()) {
        return None;
    }
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if i >= 3 && words[i].eq_ignore_ascii_case("ALL") {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    Some(format!("{}\r\n", out.join(" ")).into_bytes())
}

/// Where the arguments of `tag [UID] SEARCH ` begin.
fn search_end(bytes: &[u8]) -> Option<usize> {
    let mut at = bytes.iter().position(|&b| b == b' ')? + 1;
    if bytes.len() > at + 4 && bytes[at..at + 4].eq_ignore_ascii_case(b"UID ") {
        at += 4;
    }
    (bytes.len() > at + 7 && bytes[at..at + 7].eq_ignore_ascii_case(b"SEARCH ")).then_some(at + 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str, sync_points: Vec<usize>) -> ClientMessage {
        ClientMessage {
            bytes: text.as_bytes().to_vec(),
            sync_points,
        }
    }

    #[test]
    fn options_come_out_and_go_back_where_they_stood() {
        let first = split(&message(
            "a1 UID SEARCH RETURN (MIN COUNT) UID 1:9\r\n",
            vec![],
        ))
        .unwrap();
        assert_eq!(first.plain.bytes, b"a1 UID SEARCH UID 1:9\r\n");
        assert_eq!(first.options, "RETURN (MIN COUNT)");
        let joined = join(
            message("a1 UID SEARCH UID 4:12\r\n", vec![]),
            &first.options,
        );
        assert_eq!(
            joined.bytes,
            b"a1 UID SEARCH RETURN (MIN COUNT) UID 4:12\r\n"
        );

        // A literal's go-ahead point moves with the bytes before it.
        let text = "b search return () subject {3}\r\nfoo\r\n";
        let point = text.find("foo").unwrap();
        let literal = split(&message(text, vec![point])).unwrap();
        assert_eq!(literal.plain.bytes, b"b search subject {3}\r\nfoo\r\n");
        assert_eq!(
            &literal.plain.bytes[literal.plain.sync_points[0]..],
            b"foo\r\n"
        );
        let joined = join(literal.plain.clone(), &literal.options);
        assert_eq!(joined.bytes, text.as_bytes());
        assert_eq!(joined.sync_points, vec![point]);
    }

    #[test]
    fn other_commands_are_not_split() {
        for text in [
            "a SEARCH ALL\r\n",
            "a FETCH 1 (FLAGS)\r\n",
            "a SEARCH RETURN MIN ALL\r\n",
            "a SEARCH RETURN (MIN ALL\r\n",
        ] {
            assert_eq!(split(&message(text, vec![])), None, "{text}");
        }
    }

    #[test]
    fn options_with_a_literal_are_not_split() {
        let text = "a SEARCH RETURN ({3}\r\nMIN) ALL\r\n";
        let point = text.find("MIN").unwrap();
        assert_eq!(split(&message(text, vec![point])), None);
    }

    #[test]
    fn min_and_max_bring_all_along() {
        assert_eq!(
            with_all("RETURN (MIN)").as_deref(),
            Some("RETURN (MIN ALL)")
        );
        assert_eq!(
            with_all("return (count max)").as_deref(),
            Some("RETURN (count max ALL)")
        );
        assert_eq!(with_all("RETURN (MIN ALL)"), None);
        assert_eq!(with_all("RETURN (COUNT)"), None);
        assert_eq!(with_all("RETURN ()"), None);
    }

    #[test]
    fn all_is_left_out_of_the_answer_it_was_added_to() {
        assert_eq!(
            without_all(b"* ESEARCH (TAG \"a1\") MIN 2 ALL 2,5:7 MAX 7\r\n", "a1").unwrap(),
            b"* ESEARCH (TAG \"a1\") MIN 2 MAX 7\r\n"
        );
        assert_eq!(
            without_all(b"* ESEARCH (TAG \"a1\") UID ALL 4 MIN 4\r\n", "a1").unwrap(),
            b"* ESEARCH (TAG \"a1\") UID MIN 4\r\n"
        );
        assert_eq!(without_all(b"* ESEARCH (TAG \"b\") ALL 1\r\n", "a1"), None);
        assert_eq!(without_all(b"* 3 EXISTS\r\n", "a1"), None);
        // A line whose byte where the tag would end is inside a character (found by
        // fuzzing).
        let line = "* ESEARCH (TAG \"x\u{9e1b4}\")\r\n";
        assert!(!line.is_char_boundary(r#"* ESEARCH (TAG "a")"#.len()));
        assert_eq!(without_all(line.as_bytes(), "a"), None);
    }
}
