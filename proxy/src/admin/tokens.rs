//! Bearer tokens of the admin API, kept hashed.
//!
//! A token reads `levee_<id>_<secret>`: the id (8 hex digits) names an entry of the tokens
//! file, the secret (64 hex digits, 256 random bits) is checked against that entry's
//! Argon2id hash. The file holds one token per line, `<id> <role> <name> <hash>`, with `#`
//! comments; it never holds a token itself, so a copy of it (a backup, a config
//! repository) grants nothing. `levee admin token` makes a token and prints its line.

use std::fmt;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

const PREFIX: &str = "levee_";
const ID_HEX: usize = 8;
const SECRET_BYTES: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads status, the audit log and metrics.
    Viewer,
    /// Also switches the active site (switchover, failback).
    Operator,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        })
    }
}

/// Who presented a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    id: String,
    caller: Caller,
    /// PHC string, checked to parse when the file was read.
    hash: String,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// A tokens file that cannot be used; names the line at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// The tokens levee accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let bad = |message: String| TokensError::Line { line, message };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [id, role, name, hash] = fields[..] else {
                return Err(bad(format!(
                    "expected `<id> <role> <name> <hash>`, found {} fields",
                    fields.len()
                )));
            };
            if id.len() != ID_HEX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("the id must be {ID_HEX} hex digits")));
            }
            let role = Role::parse(role).ok_or_else(|| {
                bad(format!(
                    "unknown role {role:?} (expected viewer or operator)"
                ))
            })?;
            PasswordHash::new(hash)
                .map_err(|err| bad(format!("the hash is not a PHC string: {err}")))?;
            if !hash.starts_with("$argon2id$") {
                return Err(bad("the hash must be Argon2id".into()));
            }
            if entries.iter().any(|e| e.id.eq_ignore_ascii_case(id)) {
                return Err(bad(format!("id {id} appears twice")));
            }
            entries.push(Entry {
                id: id.to_ascii_lowercase(),
                caller: Caller {
                    name: name.to_owned(),
                    role,
                },
                hash: hash.to_owned(),
            });
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller `token` belongs to, if it is one of ours. Slow on purpose (Argon2id); an
    /// unknown id costs as much as a wrong secret, so timing tells nothing about ids.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let (id, secret) = split(token)?;
        let entry = self.entries.iter().find(|e| e.id == id);
        let hash = match entry {
            Some(e) => e.hash.clone(),
            None => dummy_hash(),
        };
        let parsed = PasswordHash::new(&hash).ok()?;
        let good = Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok();
        entry.filter(|_| good).map(|e| e.caller.clone())
    }
}

/// `(id, secret)` of a well-formed token, the id in lower case.
fn split(token: &str) -> Option<(String, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX) && hex(secret, 2 * SECRET_BYTES)).then(|| (id.to_ascii_lowercase(), secret))
}

/// A hash no secret matches, checked when the id is unknown (same cost as a real check).
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_secret(&random_hex(SECRET_BYTES)))
        .clone()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_secret(secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("Argon2 with default parameters hashes any input")
        .to_string()
}

/// A new token and the tokens-file line that admits it. The token is shown once and stored
/// nowhere by levee.
#[derive(Debug)]
pub struct NewToken {
    pub token: String,
    pub line: String,
}

pub fn generate(name: &str, role: Role) -> Result<NewToken, String> {
    if name.is_empty() || name.chars().any(char::is_whitespace) || name.starts_with('#') {
        return Err(format!(
            "the name must be one word (no spaces), not {name:?}"
        ));
    }
    let id = random_hex(ID_HEX / 2);
    let secret = random_hex(SECRET_BYTES);
    let line = format!("{id} {role} {name} {}", hash_secret(&secret));
    Ok(NewToken {
        token: format!("{PREFIX}{id}_{secret}"),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_accepted_with_its_role_and_nothing_else_is() {
        let op = generate("ops-phone", Role::Operator).unwrap();
        let view = generate("dashboard", Role::Viewer).unwrap();
        let file = format!("# admins\n\n{}\n{}\n", op.line, view.line);
        let tokens = Tokens::parse(&file).unwrap();
        assert_eq!(
            tokens.check(&op.token),
            Some(Caller {
                name: "ops-phone".into(),
                role: Role::Operator
            })
        );
        assert_eq!(tokens.check(&view.token).unwrap().role, Role::Viewer);
        // The file never contains the secret.
        let secret = op.token.rsplit('_').next().unwrap();
        assert!(!file.contains(secret));
        // One wrong digit, another entry's id with this secret, junk: refused.
        let mut wrong = op.token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(tokens.check(&wrong), None);
        let view_id = &view.line[..ID_HEX];
        let swapped = format!("{PREFIX}{view_id}_{secret}");
        assert_eq!(tokens.check(&swapped), None);
        for junk in [
            "",
            "levee_",
            "Bearer x",
            &op.token[1..],
            "levee_zzzzzzzz_00",
        ] {
            assert_eq!(tokens.check(junk), None, "{junk:?}");
        }
        // An unknown id with a well-formed secret.
        assert_eq!(tokens.check(&format!("{PREFIX}00000000_{secret}")), None);
    }

    #[test]
    fn a_bad_tokens_file_names_its_line() {
        let good = generate("a", Role::Viewer).unwrap().line;
        let cases = [
            ("abc viewer x", "line 1: expected"),
            (
                "0123456z viewer x $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
                "hex",
            ),
            (
                "01234567 admin x $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
                "unknown role",
            ),
            ("01234567 viewer x plaintext-secret", "not a PHC string"),
        ];
        for (text, want) in cases {
            let err = Tokens::parse(&format!("{text}\n")).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let twice = format!("{good}\n# again\n{good}\n");
        let err = Tokens::parse(&twice).unwrap_err().to_string();
        assert!(err.starts_with("line 3:") && err.contains("twice"), "{err}");
        assert!(generate("two words", Role::Viewer).is_err());
    }
}
