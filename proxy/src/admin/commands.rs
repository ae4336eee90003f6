//! `levee status`, `levee switchover`, `levee failback`: the admin API from a shell, a
//! table for people and `--json` for scripts. Exit status: 0 done, 1 refused or
//! unreachable, 2 bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::{AdminClient, ClientError};

/// Where the admin API is and how to log in to it.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The admin API, e.g. https://levee.example.org:8443.
    #[arg(long, env = "LEVEE_ADMIN_URL", value_name = "URL")]
    pub server: String,
    /// A file whose first line is the bearer token (`levee admin token` makes one).
    #[arg(long, env = "LEVEE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,
    /// Trust this CA (PEM) for the server's certificate instead of the system's roots.
    #[arg(long, env = "LEVEE_ADMIN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM, chain first) for a listener that requires one.
    #[arg(
        long,
        env = "LEVEE_ADMIN_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "LEVEE_ADMIN_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

fn connect(remote: &Remote) -> Result<AdminClient, ClientError> {
    let identity = remote
        .client_cert
        .as_deref()
        .zip(remote.client_key.as_deref());
    AdminClient::new(
        &remote.server,
        &remote.token_file,
        remote.ca.as_deref(),
        identity,
    )
}

fn fail(what: &str, err: &ClientError, json: bool) -> ExitCode {
    if json {
        println!("{}", json!({ "ok": false, "error": err.to_string() }));
    } else {
        eprintln!("levee {what}: {err}");
    }
    match err {
        ClientError::Setup(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// `levee status`.
pub fn status(remote: &Remote) -> ExitCode {
    match connect(remote).and_then(|c| c.get("/v1/status")) {
        Ok(status) if remote.json => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", status_table(&status));
            ExitCode::SUCCESS
        }
        Err(err) => fail("status", &err, remote.json),
    }
}

/// `levee switchover --to SITE --reason TEXT` (and `levee failback`, `to` = None).
pub fn switch(remote: &Remote, to: Option<&str>, reason: &str) -> ExitCode {
    let (what, path, body) = match to {
        Some(to) => (
            "switchover",
            "/v1/switchover",
            json!({ "to": to, "reason": reason }),
        ),
        None => ("failback", "/v1/failback", json!({ "reason": reason })),
    };
    match connect(remote).and_then(|c| c.post(path, &body)) {
        Ok(done) if remote.json => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Ok(done) => {
            let active = &done["active"];
            println!(
                "{what} done: {} is active, epoch {}",
                text(&active["backend"]),
                text(&active["epoch"])
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(what, &err, remote.json),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn health(ok: &Value, error: &Value) -> String {
    match ok.as_bool() {
        Some(true) => "ok".into(),
        Some(false) => format!("FAILING ({})", text(error)),
        None => "not checked yet".into(),
    }
}

/// `GET /v1/status` as two aligned columns.
pub fn status_table(s: &Value) -> String {
    let f = &s["failover"];
    let r = &s["replication"];
    let mut rows: Vec<(&str, String)> = vec![
        ("node", text(&s["node"])),
        ("role", text(&s["role"])),
        ("journal head", text(&s["journal_head"])),
    ];
    if s["sessions"].is_object() {
        let n = &s["sessions"];
        rows.push((
            "sessions",
            format!("IMAP {}, SMTP {}", text(&n["imap"]), text(&n["smtp"])),
        ));
    }
    if f.is_object() {
        rows.push(("active site", text(&f["active"]["backend"])));
        rows.push(("epoch", text(&f["active"]["epoch"])));
        let h = &f["health"];
        rows.push(("primary", health(&h["primary_ok"], &h["primary_error"])));
        rows.push(("replica", health(&h["replica_ok"], &h["replica_error"])));
        rows.push(("last transition", text(&h["last_transition"])));
        let resync = &f["primary_resync"];
        if resync.is_object() {
            rows.push((
                "primary resync",
                format!("{} message(s) to copy back", text(&resync["pending"])),
            ));
        }
    } else {
        rows.push(("active site", "primary (no replica site configured)".into()));
    }
    if r.is_object() {
        rows.push((
            "replication",
            format!(
                "{}, {}",
                text(&r["mode"]),
                if r["connected"] == true {
                    "connected"
                } else {
                    "DISCONNECTED"
                }
            ),
        ));
        rows.push((
            "replication lag",
            format!(
                "{} records, {} s",
                text(&r["lag_records"]),
                text(&r["lag_seconds"])
            ),
        ));
        rows.push(("replica applied", text(&r["applied_seq"])));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_what_an_admin_looks_for() {
        let status = json!({
            "node": "levee-1", "role": "primary", "journal_head": 42,
            "sessions": {"imap": 7, "smtp": 2},
            "failover": {
                "active": {"backend": "replica", "epoch": 3},
                "health": {"primary_ok": false, "primary_error": "IMAP: connection refused",
                           "replica_ok": true, "replica_error": null, "last_transition": null},
                "primary_resync": {"pending": 5}
            },
            "replication": {"mode": "sync", "connected": true, "lag_records": 0, "lag_seconds": 0.0,
                            "applied_seq": 40}
        });
        let table = status_table(&status);
        for want in [
            "active site      replica\n",
            "epoch            3\n",
            "primary          FAILING (IMAP: connection refused)\n",
            "replica          ok\n",
            "replication      sync, connected\n",
            "last transition  -\n",
            "sessions         IMAP 7, SMTP 2\n",
            "primary resync   5 message(s) to copy back\n",
            "replica applied  40\n",
        ] {
            assert!(table.contains(want), "{want:?} missing from\n{table}");
        }
        let alone = status_table(&json!({"node": "n", "role": "primary", "journal_head": 1}));
        assert!(alone.contains("no replica site configured"), "{alone}");
    }
}
