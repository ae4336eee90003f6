//! The admin API over HTTPS against a real site pair: tokens and roles are enforced (and
//! every refusal is an audit record that changes nothing), bad requests get clear 4xx
//! answers, and an operator's switchover and failback move the active site exactly once.

use std::path::Path;

use levee_proxy::admin::Role;
use levee_tests::admin::{AdminSetup, FAST_FAILOVER};
use levee_tests::clients::admin_call;
use levee_tests::{LeveeMode, ReplicaSite, Site, send_sample, tail};
use serde_json::Value;

struct Admin<'a> {
    port: u16,
    ca: &'a Path,
}

impl Admin<'_> {
    fn call(&self, token: Option<&str>, method: &str, path: &str, body: Option<&str>) -> Value {
        admin_call(self.port, Some(self.ca), token, method, path, body)
    }

    fn status_code(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> u64 {
        let answer = self.call(token, method, path, body);
        assert!(
            answer["body"]["error"].is_string() || answer["status"] == 200,
            "{answer}"
        );
        answer["status"].as_u64().unwrap()
    }
}

/// The `levee` binary as an admin's CLI.
struct Cli<'a> {
    server: String,
    ca: &'a Path,
    dir: &'a Path,
}

impl Cli<'_> {
    fn run(&self, token: &str, args: &[&str]) -> std::process::Output {
        let token_file = self.dir.join("my-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
            .args(args)
            .env("LEVEE_ADMIN_URL", &self.server)
            .env("LEVEE_TOKEN_FILE", &token_file)
            .env("LEVEE_ADMIN_CA", self.ca)
            .output()
            .unwrap()
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
fn admin_api_enforces_tokens_and_switches_once() {
    let admin = AdminSetup::new(&[("ops-phone", Role::Operator), ("dashboard", Role::Viewer)]);
    let (port, secrets) = (admin.port, &admin.secrets);
    let (operator, viewer) = (admin.tokens[0].clone(), admin.tokens[1].clone());

    let mut replica = ReplicaSite::start("admin-replica", LeveeMode::Child);
    let extra = replica.primary_extra(&format!(
        "{FAST_FAILOVER}{}\n[alerts]\nto = [\"carol@example.test\"]\n",
        admin.section("max_failures = 5\nfailure_window = \"1m\"\ndrain_timeout = \"2s\"")
    ));
    let mut primary = Site::start_with("admin-primary", LeveeMode::Child, &extra);
    let ca = primary.cert_path();
    let api = Admin { port, ca: &ca };
    let (op, view) = (Some(operator.as_str()), Some(viewer.as_str()));

    // Reading needs a valid token; a viewer's is enough.
    assert_eq!(api.status_code(None, "GET", "/v1/status", None), 401);
    let forged = format!("{}0", &viewer[..viewer.len() - 1]);
    let forged = if forged == viewer {
        viewer.replace('0', "1")
    } else {
        forged
    };
    assert_eq!(
        api.status_code(Some(&forged), "GET", "/v1/status", None),
        401
    );
    let status = api.call(view, "GET", "/v1/status", None);
    assert_eq!(status["status"], 200, "{status}");
    assert_eq!(status["body"]["role"], "primary", "{status}");
    let before = active(&status["body"]);
    assert_eq!(before.0, "primary", "{status}");
    // Sessions by protocol: this request is none of them.
    assert_eq!(status["body"]["sessions"]["imap"], 0, "{status}");
    assert!(status["body"]["sessions"]["smtp"].is_u64(), "{status}");

    // Prometheus metrics on the same listener, for the same tokens.
    assert_eq!(api.status_code(None, "GET", "/metrics", None), 401);
    let metrics = api.call(view, "GET", "/metrics", None);
    assert_eq!(metrics["status"], 200, "{metrics}");
    let text = metrics["body"].as_str().unwrap_or_default();
    assert!(
        text.lines().any(|l| l.starts_with("levee_epoch ")),
        "{text}"
    );

    // Switching needs an operator: nothing changes otherwise.
    let switch = r#"{"to": "replica", "reason": "drill"}"#;
    assert_eq!(
        api.status_code(None, "POST", "/v1/switchover", Some(switch)),
        401
    );
    assert_eq!(
        api.status_code(view, "POST", "/v1/switchover", Some(switch)),
        403
    );
    assert_eq!(
        api.status_code(Some(&forged), "POST", "/v1/switchover", Some(switch)),
        401
    );

    // Bad requests from an operator: clear 4xx, nothing changes.
    let huge = format!(
        r#"{{"to": "replica", "reason": "{}"}}"#,
        "x".repeat(64 * 1024)
    );
    for (body, want) in [
        ("{not json", 400),
        (r#"{"to": "replica", "reason": "x", "force": true}"#, 400),
        (r#"{"to": "moon", "reason": "x"}"#, 400),
        (r#"{"to": "replica", "reason": "  "}"#, 400),
        (r#"{"to": "primary", "reason": "already there"}"#, 409),
        (huge.as_str(), 413),
    ] {
        let answer = api.call(op, "POST", "/v1/switchover", Some(body));
        assert_eq!(
            answer["status"],
            want,
            "{}: {answer}",
            &body[..body.len().min(60)]
        );
        assert!(answer["body"]["error"].is_string(), "{answer}");
    }
    assert_eq!(api.status_code(op, "GET", "/v1/nothing", None), 404);
    assert_eq!(api.status_code(op, "GET", "/v1/switchover", None), 405);
    let status = api.call(view, "GET", "/v1/status", None);
    assert_eq!(
        active(&status["body"]),
        before,
        "a refused request changed the active site"
    );

    // From the CLI: a viewer reads the status table but cannot switch.
    let cli = Cli {
        server: format!("https://localhost:{port}"),
        ca: &ca,
        dir: secrets.path(),
    };
    let table = cli.run(&viewer, &["status"]);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("active site      primary\n"), "{table}");
    assert!(table.contains("replica          ok\n"), "{table}");
    let refused = cli.run(&viewer, &["switchover", "--to", "replica", "--reason", "x"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );

    // A planned switchover waits for the replica, holding new mail at MAIL FROM meanwhile;
    // a replica that does not catch up within drain_timeout means no switch at all, and
    // the held message then goes on to the primary (accepted, not refused).
    replica.daemon.stop();
    assert_eq!(
        api.status_code(Some(&forged), "GET", "/v1/status", None),
        401
    ); // a record it lacks
    let (stalled, held) = std::thread::scope(|s| {
        let call = s.spawn(|| api.call(op, "POST", "/v1/switchover", Some(switch)));
        std::thread::sleep(std::time::Duration::from_millis(700));
        let held = send_sample(
            primary.dir.path(),
            primary.levee.ports.relay,
            "during-drain@example.org",
            "alice@example.test",
        );
        (call.join().unwrap(), held)
    });
    assert_eq!(
        held["code"], 250,
        "held through the drain, then accepted: {held}"
    );
    assert_eq!(stalled["status"], 409, "{stalled}");
    assert!(
        stalled["body"]["error"]
            .as_str()
            .unwrap()
            .contains("did not catch up"),
        "{stalled}"
    );
    let status = api.call(view, "GET", "/v1/status", None);
    assert_eq!(
        active(&status["body"]),
        before,
        "a stalled drain switched anyway"
    );
    let after = send_sample(
        primary.dir.path(),
        primary.levee.ports.relay,
        "after-drain@example.org",
        "alice@example.test",
    );
    assert_eq!(after["code"], 250, "{after}");
    replica.daemon.restart();

    // The operator's switchover (by the CLI) moves the site once; the same again is refused.
    let moved = cli.run(
        &operator,
        &[
            "switchover",
            "--to",
            "replica",
            "--reason",
            "drill",
            "--json",
        ],
    );
    assert!(
        moved.status.success(),
        "{moved:?}\n{}",
        tail(&primary.levee.log(), 30)
    );
    let moved: Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!(moved["active"]["backend"], "replica", "{moved}");
    assert_eq!(moved["active"]["epoch"], before.1 + 1, "{moved}");
    let drained = &moved["drained"];
    assert!(drained["head"].as_u64().unwrap() > 0, "{moved}");
    assert!(
        drained["replica_acked"].as_u64() >= drained["head"].as_u64(),
        "switched before the replica had everything: {moved}"
    );
    assert_eq!(
        api.status_code(op, "POST", "/v1/switchover", Some(switch)),
        409
    );

    // Two failbacks at once (after the hold-down): exactly one succeeds.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let failback = r#"{"reason": "primary repaired"}"#;
    let answers: Vec<u64> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| api.call(op, "POST", "/v1/failback", Some(failback))))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap()["status"].as_u64().unwrap())
            .collect()
    });
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 409], "{answers:?}");
    let status = api.call(view, "GET", "/v1/status", None);
    assert_eq!(
        active(&status["body"]),
        ("primary".to_owned(), before.1 + 2)
    );
    // The last changes of the active site, newest first.
    let transitions = status["body"]["failover"]["transitions"]
        .as_array()
        .unwrap();
    let details: Vec<&str> = (transitions.iter())
        .map(|t| t["detail"].as_str().unwrap_or(""))
        .collect();
    assert!(details.len() >= 2, "{status}");
    assert!(details[0].contains("Replica -> Primary"), "{details:?}");
    assert!(details[1].contains("Primary -> Replica"), "{details:?}");

    // The audit log, newest first, in pages; a viewer may read it.
    let page = api.call(view, "GET", "/v1/audit?limit=2", None);
    assert_eq!(page["status"], 200, "{page}");
    let records = page["body"]["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{page}");
    assert!(
        records[0]["seq"].as_u64() > records[1]["seq"].as_u64(),
        "{page}"
    );
    // The losing one of the two failbacks is refused after the winner switched.
    assert_eq!(records[0]["action"], "failback-refused", "{page}");
    assert_eq!(records[1]["action"], "failover", "{page}");
    assert!(
        records[1]["detail"]
            .as_str()
            .unwrap()
            .contains("failback by ops-phone"),
        "{page}"
    );
    let next_page = page["body"]["next_before"].as_u64().expect("more pages");
    let rest = api.call(
        view,
        "GET",
        &format!("/v1/audit?before={next_page}&limit=500"),
        None,
    );
    let rest = rest["body"]["records"].as_array().unwrap().clone();
    assert!(rest.iter().all(|r| r["seq"].as_u64().unwrap() < next_page));
    assert!(
        rest.iter().any(|r| r["action"] == "admin-refused"),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|r| r["action"] == "switchover-refused"),
        "{rest:?}"
    );
    assert!(rest[0]["time"].as_str().unwrap().ends_with('Z'), "{rest:?}");
    for bad in [
        "/v1/audit?limit=0",
        "/v1/audit?limit=x",
        "/v1/audit?since=1",
    ] {
        assert_eq!(api.status_code(view, "GET", bad, None), 400, "{bad}");
    }

    // Each switch was reported to the admins by mail, through the site then active.
    let find = |site: &levee_proxy::mailstack::MailStack, subject: &str| {
        levee_tests::wait_for_messages(site, "carol", &[subject.to_owned()], 30)
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .find(|m| m.contains(subject))
            .unwrap()
    };
    let e2 = format!("to the replica site (epoch {})", before.1 + 1);
    let report = find(&replica.stack, &e2);
    assert!(
        report.contains("switchover by ops-phone: drill"),
        "{report}"
    );
    assert!(
        report.contains("not applicable (an admin's planned switch)"),
        "{report}"
    );
    let e3 = format!("to the primary site (epoch {})", before.1 + 2);
    let report = find(&primary.stack, &e3);
    assert!(
        report.contains("failback by ops-phone: primary repaired"),
        "{report}"
    );

    // Guessing is throttled per address: after 5 failures in a row, even a good token from
    // there waits (429 with Retry-After), and the guesses cost levee no hashing.
    for _ in 0..5 {
        assert_eq!(
            api.status_code(Some(&forged), "GET", "/v1/status", None),
            401
        );
    }
    let throttled = api.call(view, "GET", "/v1/status", None);
    assert_eq!(throttled["status"], 429, "{throttled}");
    let wait: u64 = throttled["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{throttled}");

    // Every refusal and every switch is in the journal.
    primary.levee.stop();
    let audits: Vec<(String, String, String)> = primary
        .open_journal()
        .read_from(1, usize::MAX)
        .expect("read journal")
        .into_iter()
        .filter_map(|r| match r.kind {
            levee_journal::RecordKind::Audit(a) => Some((a.actor, a.action, a.detail)),
            _ => None,
        })
        .collect();
    let count = |action: &str, who: &str| {
        audits
            .iter()
            .filter(|(actor, a, _)| a == action && actor.contains(who))
            .count()
    };
    assert_eq!(
        count("admin-refused", "unknown@127.0.0.1"),
        11,
        "{audits:?}"
    );
    assert_eq!(count("admin-refused", "dashboard"), 2, "{audits:?}");
    assert!(count("switchover-refused", "ops-phone") >= 2, "{audits:?}");
    assert_eq!(count("failback-refused", "ops-phone"), 1, "{audits:?}");
    let switches: Vec<&String> = audits
        .iter()
        .filter(|(_, a, _)| a == "failover")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(switches.len(), 2, "{audits:?}");
    assert!(
        switches[0].contains("switchover by ops-phone: drill"),
        "{switches:?}"
    );
    assert!(
        switches[1].contains("failback by ops-phone: primary repaired"),
        "{switches:?}"
    );
    // No token reached the journal or the log.
    let log = primary.levee.log();
    for secret in [&operator, &viewer] {
        assert!(!log.contains(secret.as_str()), "a token is in the log");
        assert!(!format!("{audits:?}").contains(secret.as_str()));
    }
}
