//! Credentials pass through levee to the mail server and nowhere else: not into the
//! journal's files, not into logs at trace level, not into metrics.

use base64::Engine;
use levee_tests::clients::{Security, imap_fetch_with, smtp_send};
use levee_tests::{LeveeMode, Site, contains, message_file, sample_message};

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn passwords_never_reach_journal_logs_or_metrics() {
    let mut site = Site::start_with("credentials", LeveeMode::Child, "");
    let password = site.password("alice");
    let wrong = "Wr0ng-Secret-Pa55";
    let mut sent = Vec::new();
    for (secret, expect) in [(password.as_str(), 250), (wrong, 535)] {
        for security in [Security::StartTls, Security::Implicit] {
            // A message of its own each time (the same one again would be a resend).
            let id = format!("cred-{}@example.org", sent.len());
            let file = message_file(
                site.dir.path(),
                &format!("m{}.eml", sent.len()),
                &sample_message(&id, "bob@example.test"),
            );
            sent.push(id);
            let port = match security {
                Security::Implicit => site.levee.ports.submissions,
                _ => site.levee.ports.submission,
            };
            let verdict = smtp_send(
                port,
                security,
                Some(("alice", secret)),
                "alice@example.test",
                &["bob@example.test"],
                &file,
            );
            assert_eq!(verdict["code"], expect, "{verdict}");
        }
    }
    site.wait_for_messages("bob", &sent[..2], 15);
    // IMAP LOGIN through levee, good and bad, over both kinds of TLS.
    for (port, security) in [
        (site.levee.ports.imap, Security::StartTls),
        (site.levee.ports.imaps, Security::Implicit),
    ] {
        let good = imap_fetch_with(port, security, "bob", &site.password("bob"));
        assert_eq!(good["ok"], true, "{good}");
        let bad = imap_fetch_with(port, security, "bob", wrong);
        assert_eq!(bad["stage"], "auth", "{bad}");
    }
    let metrics = site.levee.metrics();
    assert!(
        metrics.contains("levee_messages_accepted_total"),
        "{metrics}"
    );
    site.levee.stop();

    let log = site.levee.log();
    assert!(
        log.contains("authenticated"),
        "trace log too quiet to be a real check:\n{log}"
    );
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let forbidden = [
        password.clone(),
        wrong.to_string(),
        b64(&format!("\0alice\0{password}")),
        b64(&format!("\0alice\0{wrong}")),
        b64(&password),
        site.password("bob"),
    ];
    for secret in &forbidden {
        assert!(
            !log.contains(secret.as_str()),
            "log holds a credential ({secret})"
        );
        assert!(
            !metrics.contains(secret.as_str()),
            "metrics hold a credential"
        );
        for path in files_under(&site.journal_dir()) {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds a credential",
                path.display()
            );
        }
    }
    // The journal does know who sent it (the login name), which is what compliance needs.
    let records = site.journal_records();
    assert_eq!(records.len(), 2);
}
