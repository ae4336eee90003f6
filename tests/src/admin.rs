//! An admin listener for a test site: tokens written to a file the way `levee admin
//! token` prints them, a free port, and the `[admin]` section that names both; and the
//! fast failover settings the admin tests run with; and the API called as an operator.

use std::path::PathBuf;

use levee_proxy::admin::{Role, tokens};
use levee_proxy::mailstack::free_port;
use tempfile::TempDir;

use crate::tally::wait_until;

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

/// The admin API of a running levee, called as an operator with one token.
#[derive(Debug)]
pub struct Api {
    pub port: u16,
    /// The certificate the admin listener presents.
    pub ca: PathBuf,
    pub token: String,
}

impl Api {
    /// `method path [body]`; the answer as [`crate::clients::admin_call`] gives it.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        crate::clients::admin_call(
            self.port,
            Some(&self.ca),
            Some(&self.token),
            method,
            path,
            body,
        )
    }

    /// The active backend (`primary` or `replica`).
    pub fn active_backend(&self) -> String {
        let status = self.call("GET", "/v1/status", None);
        status["body"]["failover"]["active"]["backend"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Fails back to the primary, retrying while levee refuses (the primary not seen
    /// healthy yet, the hold-down not over); panics after `secs`.
    pub fn fail_back(&self, secs: u64) {
        let last = std::cell::RefCell::new(serde_json::Value::Null);
        wait_until(
            secs,
            "failback to the primary",
            || {
                let answer = self.call(
                    "POST",
                    "/v1/failback",
                    Some(r#"{"reason": "chaos: primary back"}"#),
                );
                let done = answer["status"] == 200;
                *last.borrow_mut() = answer;
                done.then_some(())
            },
            || format!("last answer: {}", last.borrow()),
        );
    }
}
