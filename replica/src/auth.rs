//! The shared-token check: the token is read from a file (never from the command line),
//! compared in constant time, and never logged.

use std::path::Path;

use subtle::ConstantTimeEq;

/// A replication secret. `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn from_file(path: &Path) -> std::io::Result<Token> {
        let text = std::fs::read(path)?;
        let trimmed = text.trim_ascii();
        if trimmed.len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: a token must be at least 16 bytes", path.display()),
            ));
        }
        Ok(Token(trimmed.to_vec()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with what a peer presented.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(presented).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_checked_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef-secret\n").unwrap();
        let token = Token::from_file(&path).unwrap();
        assert!(token.matches(b"0123456789abcdef-secret"));
        assert!(!token.matches(b"0123456789abcdef-secreT"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        std::fs::write(&path, "short").unwrap();
        assert!(Token::from_file(&path).is_err());
    }
}
