//! The client's envelope as the upstream gets it: a declared size that counts levee's trace
//! header, and the recipients the upstream may deliver.
//!
//! Pure functions on command lines and addresses, no IO.

/// Whether `rcpt` is in one of `domains` (ASCII case-insensitive, exact domain).
pub fn is_local(domains: &[String], rcpt: &str) -> bool {
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

/// A `MAIL FROM` line with its `SIZE=` parameter (RFC 1870) grown by `extra` bytes; the
/// line unchanged when it declares no size. The client declared the size of its own bytes,
/// and the upstream receives those plus levee's trace header: a server that checks the
/// declaration against what arrives must not find more than was announced.
pub fn grow_declared_size(line: &[u8], extra: usize) -> Vec<u8> {
    let Some(params) = params_start(line) else {
        return line.to_vec();
    };
    let mut out = Vec::with_capacity(line.len() + 8);
    out.extend_from_slice(&line[..params]);
    let rest = &line[params..];
    let body_end = rest
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |i| i + 1);
    let (words, ending) = rest.split_at(body_end);
    for (i, word) in words.split(|&b| b == b' ').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match declared_size(word) {
            Some(size) => {
                out.extend_from_slice(&word[..5]);
                out.extend_from_slice(size.saturating_add(extra as u64).to_string().as_bytes());
            }
            None => out.extend_from_slice(word),
        }
    }
    out.extend_from_slice(ending);
    out
}

/// `n` of a `SIZE=n` parameter.
fn declared_size(word: &[u8]) -> Option<u64> {
    let (keyword, value) = (word.get(..5)?, &word[5..]);
    if !keyword.eq_ignore_ascii_case(b"SIZE=") || value.is_empty() || value.len() > 20 {
        return None;
    }
    if !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Where the parameters after the reverse path begin: past the `>` that closes the path
/// (quoted local parts and backslash escapes may hold a `>` or a space of their own).
fn params_start(line: &[u8]) -> Option<usize> {
    let open = line.iter().position(|&b| b == b'<')?;
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in line.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grown(line: &str, extra: usize) -> String {
        String::from_utf8(grow_declared_size(line.as_bytes(), extra)).unwrap()
    }

    #[test]
    fn size_grows_by_the_header_and_nothing_else_changes() {
        assert_eq!(
            grown("MAIL FROM:<a@b> SIZE=1000\r\n", 180),
            "MAIL FROM:<a@b> SIZE=1180\r\n"
        );
        assert_eq!(
            grown("MAIL FROM:<a@b> BODY=8BITMIME size=5 SMTPUTF8\r\n", 10),
            "MAIL FROM:<a@b> BODY=8BITMIME size=15 SMTPUTF8\r\n"
        );
        for unchanged in [
            "MAIL FROM:<a@b>\r\n",
            "MAIL FROM:<a@b> BODY=8BITMIME\r\n",
            "MAIL FROM:<> SIZE=x1\r\n",
            "MAIL FROM:<> SIZE=\r\n",
            "MAIL FROM:<> XSIZE=5\r\n",
            "MAIL FROM:a@b SIZE=5\r\n",
        ] {
            assert_eq!(grown(unchanged, 7), unchanged);
        }
        assert_eq!(
            grown("MAIL FROM:<> SIZE=18446744073709551615\r\n", 7),
            "MAIL FROM:<> SIZE=18446744073709551615\r\n"
        );
    }

    #[test]
    fn a_size_inside_the_address_is_not_a_parameter() {
        assert_eq!(
            grown("MAIL FROM:<\"x> SIZE=5\"@b> SIZE=5\r\n", 1),
            "MAIL FROM:<\"x> SIZE=5\"@b> SIZE=6\r\n"
        );
        assert_eq!(
            grown("MAIL FROM:<x\\> SIZE=5@b> SIZE=5\r\n", 1),
            "MAIL FROM:<x\\> SIZE=5@b> SIZE=6\r\n"
        );
    }

    #[test]
    fn local_is_by_domain_ignoring_case() {
        let domains = vec!["example.test".to_string()];
        assert!(is_local(&domains, "alice@Example.TEST"));
        assert!(!is_local(&domains, "alice@sub.example.test"));
        assert!(!is_local(&domains, "alice"));
        assert!(!is_local(&[], "alice@example.test"));
    }
}
