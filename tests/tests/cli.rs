//! `levee check-config`: OK and exit 0 for a good file; every problem with its line and a
//! non-zero exit for a bad one; JSON for scripts.

use std::process::Command;

fn levee() -> Command {
    Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
}

#[test]
fn check_config_accepts_good_and_names_line_of_bad() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[upstream.primary]\nsmtp = \"127.0.0.1:25\"\n\n[[smtp.listen]]\naddr = \"0.0.0.0:2525\"\nkind = \"relay\"\ntls = \"none\"\n",
    )
    .unwrap();
    let out = levee().arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[upstream.primary]\nsmtp = \"127.0.0.1:25\"\n\n[smtp]\nmax_line_length = 10\n\n[[smtp.listen]]\naddr = \"0.0.0.0:2525\"\nkind = \"relay\"\n",
    )
    .unwrap();
    let out = levee().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 5: smtp.max_line_length"), "{stderr}");
    assert!(stderr.contains("smtp.listen[0].tls"), "{stderr}");

    let out = levee()
        .args(["check-config", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["problems"][0]["line"], 5, "{json}");

    let corrupt = dir.path().join("corrupt.toml");
    std::fs::write(&corrupt, b"\xff\xfe[[[").unwrap();
    let out = levee().arg("check-config").arg(&corrupt).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");

    // `levee run` refuses to start on a bad file with the same exit code.
    let out = levee()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("smtp.max_line_length"));
}

/// `levee admin token`: the token it prints is admitted by the line it prints, with the
/// role asked for; the line holds no part of the secret; bad input is refused.
#[test]
fn admin_token_makes_a_token_its_line_admits() {
    let out = levee()
        .args([
            "admin",
            "token",
            "--name",
            "ops-phone",
            "--role",
            "operator",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (token, line) = (
        made["token"].as_str().unwrap(),
        made["line"].as_str().unwrap(),
    );
    let secret = token.rsplit('_').next().unwrap();
    assert!(!line.contains(secret), "{line}");
    let tokens = levee_proxy::admin::Tokens::parse(line).unwrap();
    let caller = tokens.check(token).expect("the printed token is admitted");
    assert_eq!(caller.name, "ops-phone");
    assert_eq!(caller.role, levee_proxy::admin::Role::Operator);

    for args in [
        &["admin", "token", "--name", "x", "--role", "root"][..],
        &["admin", "token", "--name", "two words"][..],
    ] {
        let out = levee().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
    }
}
