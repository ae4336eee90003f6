//! The Python clients in `tests/clients/`, run as child processes. Each prints one JSON line;
//! these helpers return it parsed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use serde_json::Value;

fn script(name: &str) -> String {
    format!("{}/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_json(mut command: Command) -> Value {
    let output = command.output().expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|err| {
        panic!(
            "client printed no JSON ({err}): status {:?}\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// How [`smtp_send`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    StartTls,
    Implicit,
}

impl Security {
    /// The Python clients' flag for this kind of connection.
    fn add_args(self, command: &mut Command) {
        match self {
            Security::Plain => {}
            Security::StartTls => {
                command.arg("--starttls");
            }
            Security::Implicit => {
                command.arg("--ssl");
            }
        }
    }
}

/// Sends `message` with smtplib; returns `{"ok", "code", "reply", "stage", "refused"}`.
pub fn smtp_send(
    addr: SocketAddr,
    security: Security,
    login: Option<(&str, &str)>,
    from: &str,
    to: &[&str],
    message: &Path,
) -> Value {
    smtp_send_as("client.test", addr, security, login, from, to, message)
}

/// [`smtp_send`] with the client's EHLO name.
pub fn smtp_send_as(
    helo: &str,
    addr: SocketAddr,
    security: Security,
    login: Option<(&str, &str)>,
    from: &str,
    to: &[&str],
    message: &Path,
) -> Value {
    let mut command = Command::new("python3");
    command
        .arg(script("smtp_send.py"))
        .args(["--helo", helo])
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--from", from, "--message"])
        .arg(message);
    for rcpt in to {
        command.args(["--to", rcpt]);
    }
    security.add_args(&mut command);
    if let Some((user, password)) = login {
        command.args(["--user", user, "--password", password]);
    }
    run_json(command)
}

/// Every message of `user`'s INBOX, fetched with imaplib (BODY.PEEK[]).
pub fn imap_fetch(addr: SocketAddr, user: &str, password: &str) -> Vec<Vec<u8>> {
    let value = imap_fetch_with(addr, Security::Plain, user, password);
    let messages = value["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("imap_fetch failed: {value}"));
    messages
        .iter()
        .map(|m| decode_b64(m["body_b64"].as_str().expect("body_b64")))
        .collect()
}

/// imaplib's view of `user`'s INBOX over `security`: `{"ok", "uidvalidity", "messages":
/// [{"uid", "body_b64"}]}` or `{"ok": false, "stage", "error"}`.
pub fn imap_fetch_with(addr: SocketAddr, security: Security, user: &str, password: &str) -> Value {
    let mut command = Command::new("python3");
    command
        .arg(script("imap_fetch.py"))
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--user", user, "--password", password]);
    security.add_args(&mut command);
    run_json(command)
}

/// Starts imap_idle.py: it prints `IDLING` once in IDLE, then one JSON line after the next
/// new message arrived and was fetched on the same connection.
pub fn imap_idle(
    addr: SocketAddr,
    implicit_tls: bool,
    user: &str,
    password: &str,
) -> std::process::Child {
    let mut command = Command::new("python3");
    command
        .arg(script("imap_idle.py"))
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--user", user, "--password", password])
        .stdout(std::process::Stdio::piped());
    if implicit_tls {
        command.arg("--ssl");
    }
    command.spawn().expect("python3 must be installed")
}

pub fn decode_b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// One request to levee's admin API (`tests/clients/admin_call.py`, Python's http.client):
/// HTTPS verified against `ca` when given; returns `{"status", "retry_after", "body"}`.
pub fn admin_call(
    port: u16,
    ca: Option<&Path>,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Value {
    let mut command = Command::new("python3");
    command.arg(script("admin_call.py"));
    command.args(["--port", &port.to_string()]);
    if let Some(ca) = ca {
        command.arg("--cafile").arg(ca);
    }
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.args([method, path]);
    if let Some(body) = body {
        command.arg(body);
    }
    run_json(command)
}

/// A `GET` from levee's admin API with the body as bytes: its status, its headers (names in
/// lower case) and its body, as [`admin_call`] sends it.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u64,
    pub headers: serde_json::Map<String, Value>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The value of header `name` (lower case), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Value::as_str)
    }
}

/// [`admin_call`] for a `GET` whose answer is not JSON (a message, an mbox).
pub fn admin_get_raw(port: u16, ca: Option<&Path>, token: Option<&str>, path: &str) -> RawAnswer {
    let mut command = Command::new("python3");
    command.arg(script("admin_call.py"));
    command.args(["--port", &port.to_string(), "--raw"]);
    if let Some(ca) = ca {
        command.arg("--cafile").arg(ca);
    }
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command.args(["GET", path]);
    let answer = run_json(command);
    RawAnswer {
        status: answer["status"].as_u64().expect("status"),
        headers: answer["headers"].as_object().cloned().unwrap_or_default(),
        body: decode_b64(answer["body_b64"].as_str().expect("body_b64")),
    }
}
