//! The admin web console in headless Chromium against a real site pair: a wrong token is
//! refused with the API's own message, the operator's token shows the primary active, a
//! switchover with a reason makes the replica active (checked in the page and then through
//! the API), the audit log lists it as text, and a phone-sized screenshot is kept in
//! `target/test-artifacts/admin-console.png`.
//!
//! The browser side is `tests/console/console.mjs` (Node with `playwright-core`, no
//! downloaded browser: Debian's `/usr/bin/chromium`). A missing Chromium, Node or npm is a
//! loud failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use levee_proxy::admin::{Role, tokens};
use levee_tests::admin::{AdminSetup, FAST_FAILOVER};
use levee_tests::clients::admin_call;
use levee_tests::{LeveeMode, ReplicaSite, Site, tail};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// Panics with what to install unless Chromium, Node and the script's packages are there
/// (installs the packages with `npm ci` when only they are missing).
fn ensure_browser_tools() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "the console test needs Chromium at {CHROMIUM}: apt-get install chromium"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "the console test needs Node.js 20 or newer: apt-get install nodejs npm ({node:?})"
    );
    let dir = console_dir();
    if !dir.join("node_modules/playwright-core").exists() {
        eprintln!("admin console test: npm ci in {}", dir.display());
        let npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status();
        assert!(
            matches!(npm, Ok(s) if s.success()),
            "the console test needs playwright-core in {}/node_modules and `npm ci` failed \
             ({npm:?}): apt-get install npm, then run `npm ci` there",
            dir.display()
        );
    }
}

fn active(status: &Value) -> (String, u64) {
    let a = &status["failover"]["active"];
    (
        a["backend"].as_str().unwrap_or("").to_owned(),
        a["epoch"].as_u64().unwrap_or(0),
    )
}

#[test]
fn console_switches_over_in_headless_chromium() {
    ensure_browser_tools();
    let admin = AdminSetup::new(&[("ops-console", Role::Operator)]);
    // Well formed, but not in the tokens file.
    let stranger = tokens::generate("stranger", Role::Operator).unwrap();
    let (port, token) = (admin.port, admin.tokens[0].clone());

    let replica = ReplicaSite::start("console-replica", LeveeMode::Child);
    let extra = replica.primary_extra(&format!(
        "{FAST_FAILOVER}{}",
        admin.section("max_failures = 5\nfailure_window = \"1m\"\ndrain_timeout = \"20s\"")
    ));
    let primary = Site::start_with("console-primary", LeveeMode::Child, &extra);
    let ca = primary.cert_path();
    let api = |path: &str| admin_call(port, Some(&ca), Some(&token), "GET", path, None);
    let status = api("/v1/status");
    assert_eq!(status["status"], 200, "{status}");
    let before = active(&status["body"]);
    assert_eq!(before.0, "primary", "{status}");

    let screenshot = target_dir().join("test-artifacts/admin-console.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let started = Instant::now();
    let run = Command::new("node")
        .arg("console.mjs")
        .current_dir(console_dir())
        .env("LEVEE_CONSOLE_URL", format!("https://localhost:{port}/"))
        .env("LEVEE_CONSOLE_TOKEN", &token)
        .env("LEVEE_CONSOLE_WRONG_TOKEN", &stranger.token)
        .env("LEVEE_CONSOLE_SCREENSHOT", &screenshot)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let context = || {
        format!(
            "exit {:?} after {:?}\nstdout:\n{stdout}\nstderr:\n{}\nlevee log:\n{}",
            run.status.code(),
            started.elapsed(),
            tail(&stderr, 30),
            tail(&primary.levee.log(), 30)
        )
    };
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON report from console.mjs\n{}", context()));
    assert!(run.status.success() && seen["ok"] == true, "{}", context());
    eprintln!("console.mjs took {:?}", started.elapsed());

    // The page as served: strict CSP; the wrong token got the API's message, stored nothing.
    let csp = seen["csp"].as_str().unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{seen}"
    );
    let refused = seen["wrong_token_error"].as_str().unwrap_or_default();
    assert!(
        refused.contains("a valid bearer token is required"),
        "{seen}"
    );
    assert!(refused.contains("401"), "{seen}");

    // Logged in: primary active, only the switchover offered, token in this tab only.
    assert_eq!(seen["before"]["site"], "primary", "{seen}");
    assert_eq!(seen["before"]["epoch"], before.1, "{seen}");
    assert_eq!(seen["before"]["switchover_enabled"], true, "{seen}");
    assert_eq!(seen["before"]["failback_enabled"], false, "{seen}");
    assert_eq!(seen["token_in_session_storage"], true, "{seen}");
    assert_eq!(seen["token_elsewhere"], false, "{seen}");
    assert_eq!(seen["replica_health"], "ok", "{seen}");
    assert_eq!(seen["confirm_enabled_without_reason"], false, "{seen}");

    // Switched: the page shows the replica and the next epoch; now failback is offered.
    let epoch = before.1 + 1;
    assert_eq!(seen["after"]["site"], "replica", "{seen}");
    assert_eq!(seen["after"]["epoch"], epoch, "{seen}");
    assert_eq!(seen["after"]["switchover_enabled"], false, "{seen}");
    assert_eq!(seen["after"]["failback_enabled"], true, "{seen}");
    let message = seen["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("replica site is active now (epoch {epoch})")),
        "{seen}"
    );
    assert_eq!(seen["audit_first_action"], "failover", "{seen}");
    let detail = seen["audit_switch"].as_str().unwrap_or_default();
    assert!(
        detail.contains("switchover by ops-console: console drill <b>&amp;</b>"),
        "the reason is shown as text: {seen}"
    );
    assert_eq!(seen["audit_markup_injected"], false, "{seen}");
    assert!(
        seen["freshness"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Live"),
        "{seen}"
    );
    assert_eq!(seen["stored_after_logout"], 0, "{seen}");
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen}");

    // The screenshot is a PNG.
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        screenshot.display()
    );

    // And levee really switched.
    let status = api("/v1/status");
    assert_eq!(
        active(&status["body"]),
        ("replica".to_owned(), epoch),
        "{status}"
    );
}
