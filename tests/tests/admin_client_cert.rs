//! The admin listener with `client_ca`: a token alone no longer opens it. The CLI gets in
//! with a certificate signed by that CA and its token, and is turned away, with a clear
//! message and nothing audited as a login, without one or with a stranger's.

use std::path::{Path, PathBuf};
use std::process::Output;

use levee_proxy::admin::Role;
use levee_proxy::tls::write_self_signed;
use levee_tests::admin::AdminSetup;
use levee_tests::{LeveeMode, Site, tail};
use serde_json::Value;

/// A self-signed certificate and key in their own directory under `dir`.
fn identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    write_self_signed(&home, &[name]).unwrap()
}

#[test]
fn a_client_certificate_is_required_on_top_of_the_token() {
    let admin = AdminSetup::new(&[("noc-laptop", Role::Viewer)]);
    let (secrets, port) = (admin.secrets.path(), admin.port);
    let token_file = secrets.join("token");
    std::fs::write(&token_file, format!("{}\n", admin.tokens[0])).unwrap();
    // The admins' CA is, here, the one certificate it admits.
    let (admin_cert, admin_key) = identity(secrets, "noc-laptop.example.org");
    let (stranger_cert, stranger_key) = identity(secrets, "stranger.example.org");
    let extra = admin.section(&format!("client_ca = \"{}\"", admin_cert.display()));
    let site = Site::start_with("admin-mtls", LeveeMode::Child, &extra);
    let cli = |identity: Option<(&Path, &Path)>| -> Output {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"));
        command
            .args(["status", "--json"])
            .env("LEVEE_ADMIN_URL", format!("https://localhost:{port}"))
            .env("LEVEE_TOKEN_FILE", &token_file)
            .env("LEVEE_ADMIN_CA", site.cert_path());
        if let Some((cert, key)) = identity {
            command.arg("--client-cert").arg(cert);
            command.arg("--client-key").arg(key);
        }
        command.output().unwrap()
    };

    let admitted = cli(Some((&admin_cert, &admin_key)));
    assert!(
        admitted.status.success(),
        "{admitted:?}\n{}",
        tail(&site.levee.log(), 20)
    );
    let status: Value = serde_json::from_slice(&admitted.stdout).expect("JSON status");
    assert_eq!(status["role"], "primary", "{status}");

    for (who, identity) in [
        ("no certificate", None),
        ("a stranger's", Some((&*stranger_cert, &*stranger_key))),
    ] {
        let refused = cli(identity);
        assert!(!refused.status.success(), "{who}: {refused:?}");
        let said: Value = serde_json::from_slice(&refused.stdout)
            .unwrap_or_else(|_| panic!("{who}: not JSON: {refused:?}"));
        let error = said["error"].as_str().unwrap_or_default();
        assert!(error.contains("cannot reach"), "{who}: {said}");
    }
    // The listener said why in its log, and nobody got as far as a token check.
    let log = site.levee.log();
    assert!(
        log.contains("admin API: TLS handshake failed"),
        "{}",
        tail(&log, 20)
    );
    assert!(!log.contains("admin-refused"), "{}", tail(&log, 20));

    // Half an identity is a usage error, before any connection.
    let half = std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
        .args(["status", "--client-cert"])
        .arg(&admin_cert)
        .env("LEVEE_ADMIN_URL", format!("https://localhost:{port}"))
        .env("LEVEE_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2), "{half:?}");
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--client-key"),
        "{half:?}"
    );
}
