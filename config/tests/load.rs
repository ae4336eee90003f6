//! Loading real files: defaults, every kind of mistake, and the line each error names.

use std::time::Duration;

use levee_config::{Config, ConfigError, ConfigFile, ListenerKind, TlsMode};

const MINIMAL: &str = r#"
[upstream.primary]
smtp = "127.0.0.1:2525"

[[smtp.listen]]
addr = "127.0.0.1:25"
kind = "relay"
tls = "none"
"#;

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(err) => err.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn minimal_file_gets_production_defaults() {
    let config = Config::from_toml(MINIMAL).expect("minimal config loads");
    assert_eq!(config.smtp.listen[0].kind, ListenerKind::Relay);
    assert_eq!(config.smtp.listen[0].tls, TlsMode::None);
    assert_eq!(config.smtp.max_message_size, 50 * 1024 * 1024);
    assert_eq!(config.smtp.command_timeout, Duration::from_secs(300));
    assert!(!config.smtp.allow_plaintext_auth);
    assert_eq!(
        config.upstream.primary.smtp_for(ListenerKind::Submission),
        "127.0.0.1:2525".parse().unwrap()
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = format!("{MINIMAL}\n[smtp]\nmax_line_lenght = 9000\n");
    let errs = problems(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("line 11"), "{errs:?}");
    assert!(errs[0].contains("max_line_lenght"), "{errs:?}");
}

#[test]
fn wrong_type_and_syntax_errors_name_the_line() {
    let errs = problems("[upstream.primary]\nsmtp = 25\n");
    assert!(errs[0].starts_with("line 2"), "{errs:?}");
    let errs = problems("[upstream.primary\nsmtp = \"x\"\n");
    assert!(errs[0].starts_with("line 1"), "{errs:?}");
    let errs = problems("[upstream.primary]\nsmtp = \"not-an-address\"\n");
    assert!(errs[0].starts_with("line 2"), "{errs:?}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let text = r#"
[upstream.primary]
smtp = "127.0.0.1:2525"

[smtp]
max_line_length = 100
command_timeout = "0s"

[[smtp.listen]]
addr = "127.0.0.1:25"
kind = "relay"

[[smtp.listen]]
addr = "127.0.0.1:25"
kind = "submission"
tls = "none"
"#;
    let errs = problems(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("line 6: smtp.max_line_length")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("line 7: smtp.command_timeout")),
        "{errs:?}"
    );
    // The first listener defaults to STARTTLS but there is no [tls] section.
    assert!(
        errs.iter().any(|e| e.contains("smtp.listen[0].tls")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("line 14: smtp.listen[1].addr")),
        "{errs:?}"
    );
}

#[test]
fn missing_tls_files_are_reported() {
    let text = format!(
        "{MINIMAL}\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n"
    );
    let errs = problems(&text);
    assert!(errs.iter().any(|e| e.contains("tls.cert")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("tls.key")), "{errs:?}");
}

#[test]
fn unreadable_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Config::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("absent.toml"));
}

#[test]
fn binary_garbage_is_rejected_not_panicking() {
    let garbage = String::from_utf8_lossy(&[0xff, 0x00, 0x5b, 0x5b, 0x0a, 0x3d]).into_owned();
    assert!(!problems(&garbage).is_empty());
}

#[test]
fn imap_and_failover_sections_are_checked_with_the_smtp_ones() {
    let text = format!(
        "{MINIMAL}\n[[imap.listen]]\naddr = \"127.0.0.1:25\"\n\n[[imap.listen]]\naddr = \"127.0.0.1:993\"\ntls = \"implicit\"\n\n[imap]\nmax_literal = 10\n\n[failover]\nfailures = 0\n"
    );
    let errs = problems(&text);
    for expected in [
        "imap.listen[0].addr",
        "imap.listen[1].tls",
        "upstream.primary.imap",
        "imap.max_literal",
        "failover.failures",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "no error for {expected}: {errs:?}"
        );
    }

    let good = r#"
[upstream.primary]
smtp = "127.0.0.1:2525"
imap = "127.0.0.1:1143"

[upstream.replica]
smtp = "127.0.0.1:3525"
imap = "127.0.0.1:3143"

[[smtp.listen]]
addr = "127.0.0.1:25"
kind = "relay"
tls = "none"

[[imap.listen]]
addr = "127.0.0.1:143"
tls = "none"
"#;
    let config = Config::from_toml(good).unwrap_or_else(|e| panic!("{e}\n{good}"));
    assert_eq!(config.failover.failures, 3);
    assert_eq!(config.imap.listen.len(), 1);
    assert!(config.upstream.replica.unwrap().imap.is_some());
}

#[test]
fn admin_section_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# none yet\n").unwrap();
    let admin = |listen: &str, tls: &str, file: &std::path::Path| {
        format!(
            "{MINIMAL}\n[admin]\nlisten = \"{listen}\"\ntokens = \"{}\"\ntls = \"{tls}\"\n",
            file.display()
        )
    };
    // Plain HTTP on loopback is fine; the defaults fill in the limits.
    let config = Config::from_toml(&admin("127.0.0.1:8443", "none", &tokens)).unwrap();
    let section = config.admin.expect("[admin] read");
    assert_eq!(section.max_failures, 5);
    assert_eq!(section.failure_window, Duration::from_secs(60));
    // Tokens in clear over a network, HTTPS without a certificate, a missing tokens file.
    let errs = problems(&admin("0.0.0.0:8443", "none", &tokens));
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.tls") && e.contains("loopback")),
        "{errs:?}"
    );
    let errs = problems(&admin("127.0.0.1:8443", "implicit", &tokens));
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.tls") && e.contains("[tls]")),
        "{errs:?}"
    );
    let errs = problems(&admin(
        "127.0.0.1:8443",
        "none",
        &dir.path().join("missing"),
    ));
    assert!(errs.iter().any(|e| e.contains("admin.tokens")), "{errs:?}");
    // Client certificates: the CA file must exist, and they need TLS.
    let with_ca = |tls: &str, ca: &std::path::Path| {
        format!(
            "{}client_ca = \"{}\"\n",
            admin("127.0.0.1:8443", tls, &tokens),
            ca.display()
        )
    };
    let errs = problems(&with_ca("none", &dir.path().join("no-ca.pem")));
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.client_ca") && e.contains("not a readable file")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.client_ca") && e.contains("implicit")),
        "{errs:?}"
    );
    let errs = problems(&admin("127.0.0.1:8443", "plain", &tokens));
    assert!(errs.iter().any(|e| e.contains("plain")), "{errs:?}");
}

#[test]
fn alerts_need_real_addresses() {
    let ok = Config::from_toml(&format!(
        "{MINIMAL}\n[alerts]\nto = [\"ops@example.org\"]\n"
    ))
    .unwrap();
    assert_eq!(ok.alerts.unwrap().to, ["ops@example.org"]);
    for bad in [
        "to = []",
        "to = [\"ops\"]",
        "to = [\"a@b\"]\nfrom = \"not an address\"",
    ] {
        let errs = problems(&format!("{MINIMAL}\n[alerts]\n{bad}\n"));
        assert!(
            errs.iter().any(|e| e.contains("alerts.")),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn the_primary_master_user_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("master.pw");
    std::fs::write(&password, "secret\n").unwrap();
    let with = |keys: &str| {
        MINIMAL.replace(
            "smtp = \"127.0.0.1:2525\"\n",
            &format!("smtp = \"127.0.0.1:2525\"\n{keys}"),
        )
    };
    let good = with(&format!(
        "imap = \"127.0.0.1:143\"\nmaster_user = \"levee-master\"\nmaster_password_file = \"{}\"\n",
        password.display()
    ));
    let config = Config::from_toml(&good).unwrap_or_else(|e| panic!("{e}\n{good}"));
    assert_eq!(
        config.upstream.primary.master_user.as_deref(),
        Some("levee-master")
    );
    // A user without its password, a password file that is not there, no IMAP server.
    let errs = problems(&with("imap = \"127.0.0.1:143\"\nmaster_user = \"m\"\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("upstream.primary.master_user") && e.contains("together")),
        "{errs:?}"
    );
    let errs = problems(&with(&format!(
        "imap = \"127.0.0.1:143\"\nmaster_user = \"m\"\nmaster_password_file = \"{}\"\n",
        dir.path().join("absent").display()
    )));
    assert!(
        errs.iter()
            .any(|e| e.contains("upstream.primary.master_password_file")),
        "{errs:?}"
    );
    let errs = problems(&with(&format!(
        "master_user = \"m\"\nmaster_password_file = \"{}\"\n",
        password.display()
    )));
    assert!(
        errs.iter()
            .any(|e| e.contains("upstream.primary.master_user") && e.contains("imap")),
        "{errs:?}"
    );
}
