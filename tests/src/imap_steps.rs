//! A step-by-step IMAP client (tests/clients/imap_steps.py) on one connection: a test
//! drives it like a mail client across a failover and reads each answer as JSON.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// A logged-in client process.
#[derive(Debug)]
pub struct ImapSteps {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl ImapSteps {
    /// Connects with implicit TLS to `addr` (levee) and logs in.
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> ImapSteps {
        ImapSteps::start(addr, user, password, "--ssl")
    }

    /// Connects without TLS to `addr` (a mail server on loopback) and logs in.
    pub fn login_plain(addr: SocketAddr, user: &str, password: &str) -> ImapSteps {
        ImapSteps::start(addr, user, password, "--plain")
    }

    fn start(addr: SocketAddr, user: &str, password: &str, security: &str) -> ImapSteps {
        let mut child = Command::new("python3")
            .arg(format!(
                "{}/clients/imap_steps.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["--host", &addr.ip().to_string()])
            .args(["--port", &addr.port().to_string()])
            .args(["--user", user, "--password", password, security])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut steps = ImapSteps {
            child,
            input,
            output,
        };
        let hello = steps.answer();
        assert_eq!(hello["ok"], true, "login failed: {hello}");
        steps
    }

    /// Runs one step and returns its answer; panics if the step failed.
    pub fn ok(&mut self, step: Value) -> Value {
        let answer = self.step(step.clone());
        assert_eq!(answer["ok"], true, "{step} failed: {answer}");
        answer
    }

    /// Runs one step and returns its answer.
    pub fn step(&mut self, step: Value) -> Value {
        writeln!(self.input, "{step}").expect("write to the client");
        self.input.flush().expect("flush");
        self.answer()
    }

    fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read the client");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("no JSON ({e}): {line:?}"))
    }

    pub fn select(&mut self, mailbox: &str) -> Value {
        self.ok(json!({"op": "select", "mailbox": mailbox}))
    }

    /// `[{"uid", "flags", "message_id"}]` of the selected mailbox.
    pub fn list(&mut self) -> Vec<Value> {
        let answer = self.ok(json!({"op": "list"}));
        answer["messages"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for ImapSteps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
