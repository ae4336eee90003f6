//! levee's configuration: one TOML file, checked completely before anything starts.
//!
//! # Layout
//! - [`schema`]: the structs of `levee run`'s file, their defaults, and what each key means.
//! - [`replication`]: the primary's `[replication]` section and `levee replica`'s own file.
//! - [`validate`]: the rules serde cannot express (ports in use twice, TLS needed by a listener).
//! - [`locate`]: maps a key path such as `smtp.listen[1].tls` back to its line in the file, so
//!   every error says where to look.
//!
//! Loading never half-succeeds: [`ConfigFile::from_toml`] returns the config or every problem
//! found.

pub mod admin;
pub mod alerts;
pub mod failover;
pub mod imap;
pub mod journal;
pub mod locate;
pub mod replication;
pub mod schema;
pub mod validate;

use std::fmt;
use std::path::Path;

pub use admin::*;
pub use alerts::*;
pub use failover::*;
pub use imap::*;
pub use journal::*;
pub use replication::*;
pub use schema::*;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`smtp.max_line_length`), empty when the file itself is unreadable.
    pub key: String,
    /// 1-based line of the key in the file, when it appears there.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Why a configuration could not be loaded: every problem, in file order.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems found, empty for an unreadable file.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

fn render(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// A configuration file type: deserialised by serde, then checked by its own rules.
pub trait ConfigFile: serde::de::DeserializeOwned + Sized {
    /// Every problem serde could not see; empty when the file is usable.
    fn problems(&self) -> Vec<Problem>;

    /// Reads and validates `path`.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates a configuration held in memory.
    fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| {
            let line = err.span().map(|span| locate::line_of(text, span.start));
            ConfigError::Invalid(vec![Problem {
                key: String::new(),
                line,
                message: err.message().trim().to_string(),
            }])
        })?;
        let mut problems = config.problems();
        if problems.is_empty() {
            return Ok(config);
        }
        for problem in &mut problems {
            problem.line = locate::line_of_key(text, &problem.key);
        }
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid(problems))
    }
}

impl ConfigFile for Config {
    fn problems(&self) -> Vec<Problem> {
        validate::check(self)
    }
}

impl ConfigFile for ReplicaConfig {
    fn problems(&self) -> Vec<Problem> {
        validate::check_replica(self)
    }
}
