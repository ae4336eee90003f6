//! Server-side IMAP framing: the upstream's bytes, streamed to the client as they come,
//! with the first line of every response held back whole so that levee can read it (tagged
//! completions, continuation requests, CAPABILITY) and, where needed, rewrite it.
//!
//! Literal data (a message body in a FETCH response, up to the server's message size) is
//! never buffered: it passes through in the chunks it arrives in. imap-codec's
//! `Fragmentizer` keeps every message whole in memory, which is right for what clients
//! send (bounded by levee) but not for what a server sends back.

/// Longest response head held back for inspection; a longer line (a SEARCH result of a
/// huge mailbox, say) streams through uninspected.
const MAX_HEAD: usize = 64 * 1024;

/// A piece of the upstream's byte stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The first line of a response, whole, CRLF included.
    Head(Vec<u8>),
    /// Anything else: literal data, lines that follow a literal, an over-long head.
    Raw(Vec<u8>),
}

#[derive(Debug, Default)]
pub struct ResponseScanner {
    buf: Vec<u8>,
    /// Literal bytes still to pass through.
    literal_left: u64,
    /// The next line continues a response (it follows a literal) rather than starting one.
    continuing: bool,
    /// Part of the current line has already gone out raw (it was too long to hold).
    spilled: bool,
}

impl ResponseScanner {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Lets go of a buffer a large response made grow, once it has passed through.
    pub fn compact(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * 1024 {
            self.buf = Vec::new();
        }
    }

    /// Part of a response has gone to the client and the rest has not: literal data, the
    /// lines after it, or a line split in the middle.
    pub fn mid_response(&self) -> bool {
        self.literal_left > 0 || self.continuing || self.spilled || !self.buf.is_empty()
    }

    /// The next piece, or `None` when more bytes are needed.
    pub fn next_piece(&mut self) -> Option<Piece> {
        if self.buf.is_empty() {
            return None;
        }
        if self.literal_left > 0 {
            let n = (self.literal_left.min(self.buf.len() as u64)) as usize;
            self.literal_left -= n as u64;
            return Some(Piece::Raw(self.buf.drain(..n).collect()));
        }
        let Some(newline) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_HEAD {
                // Keep the tail: a literal announcement at the line's end must be seen.
                let keep = 32;
                let out: Vec<u8> = self.buf.drain(..self.buf.len() - keep).collect();
                self.spilled = true;
                return Some(Piece::Raw(out));
            }
            return None;
        };
        let line: Vec<u8> = self.buf.drain(..=newline).collect();
        let head = !self.continuing && !self.spilled;
        self.spilled = false;
        match literal_announced(&line) {
            Some(length) => {
                self.literal_left = length;
                self.continuing = true;
            }
            None => self.continuing = false,
        }
        Some(if head {
            Piece::Head(line)
        } else {
            Piece::Raw(line)
        })
    }
}

/// The length of the literal a line announces at its end (`{12}`, `{12+}`, `~{12}`).
pub fn literal_announced(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(scanner: &mut ResponseScanner, bytes: &[u8]) -> Vec<Piece> {
        scanner.push(bytes);
        std::iter::from_fn(|| scanner.next_piece()).collect()
    }

    #[test]
    fn heads_are_whole_and_literals_stream() {
        let mut s = ResponseScanner::default();
        let got = pieces(&mut s, b"* 1 FETCH (BODY[] {10}\r\n01234");
        assert_eq!(
            got,
            vec![
                Piece::Head(b"* 1 FETCH (BODY[] {10}\r\n".to_vec()),
                Piece::Raw(b"01234".to_vec())
            ]
        );
        let got = pieces(&mut s, b"56789)\r\na1 OK done\r\n+ idling\r\n");
        assert_eq!(
            got,
            vec![
                Piece::Raw(b"56789".to_vec()),
                Piece::Raw(b")\r\n".to_vec()),
                Piece::Head(b"a1 OK done\r\n".to_vec()),
                Piece::Head(b"+ idling\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn a_partial_line_waits_and_a_huge_one_streams() {
        let mut s = ResponseScanner::default();
        assert!(pieces(&mut s, b"* OK [CAPA").is_empty());
        let mut long = b"* SEARCH".to_vec();
        long.extend(b" 1".repeat(MAX_HEAD / 2 + 1));
        let got = pieces(&mut s, &long);
        assert!(matches!(got.as_slice(), [Piece::Raw(_)]));
        let got = pieces(&mut s, b"\r\na OK\r\n");
        assert!(matches!(&got[0], Piece::Raw(tail) if tail.ends_with(b" 1\r\n")));
        assert_eq!(got[1], Piece::Head(b"a OK\r\n".to_vec()));
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"* 1 FETCH (BODY[] {42}\r\n"), Some(42));
        assert_eq!(literal_announced(b"a LOGIN {5+}\r\n"), Some(5));
        assert_eq!(literal_announced(b"* 1 FETCH (BINARY[] ~{7}\r\n"), Some(7));
        assert_eq!(literal_announced(b"* OK {x}\r\n"), None);
        assert_eq!(literal_announced(b"* OK fine\r\n"), None);
        assert_eq!(literal_announced(b"* OK {}\r\n"), None);
    }
}
