//! An admin listener for a test site: tokens written to a file the way `levee admin
//! token` prints them, a free port, and the `[admin]` section that names both; and the
//! fast failover settings the admin tests run with.

use std::path::PathBuf;

use levee_proxy::admin::{Role, tokens};
use levee_proxy::mailstack::free_port;
use tempfile::TempDir;

/// Health checks every 100 ms, a site down after 3 failed ones, 1 s between transitions.
pub const FAST_FAILOVER: &str = "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"1s\"\n";

#[derive(Debug)]
pub struct AdminSetup {
    /// Holds the tokens file (and whatever else a test keeps secret).
    pub secrets: TempDir,
    pub tokens_file: PathBuf,
    pub port: u16,
    /// The bearer tokens, in the order they were asked for.
    pub tokens: Vec<String>,
}

impl AdminSetup {
    /// A tokens file admitting one token per `(name, role)`.
    pub fn new(admitted: &[(&str, Role)]) -> AdminSetup {
        let secrets = tempfile::tempdir().expect("a directory for secrets");
        let made: Vec<tokens::NewToken> = admitted
            .iter()
            .map(|(name, role)| tokens::generate(name, *role).expect("a token"))
            .collect();
        let tokens_file = secrets.path().join("admin-tokens");
        let lines: String = made.iter().map(|t| format!("{}\n", t.line)).collect();
        std::fs::write(&tokens_file, lines).expect("write the tokens file");
        AdminSetup {
            secrets,
            tokens_file,
            port: free_port().expect("a free port"),
            tokens: made.into_iter().map(|t| t.token).collect(),
        }
    }

    /// The `[admin]` section, with `keys` (TOML lines) added.
    pub fn section(&self, keys: &str) -> String {
        format!(
            "\n[admin]\nlisten = \"127.0.0.1:{}\"\ntokens = \"{}\"\n{keys}\n",
            self.port,
            self.tokens_file.display()
        )
    }
}
