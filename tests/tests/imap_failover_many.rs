//! Many sessions at once: 200 IMAP sessions of 20 users, all in IDLE, when the primary's
//! Dovecot dies. Every one is moved to the replica on its own connection (no BYE, no NO),
//! sees the message delivered to its user after the kill, and fetches it; levee counts
//! exactly one migration per session.

use std::time::{Duration, Instant};

use levee_tests::imap_load::{self, IdleSession, Security, show};
use levee_tests::load::{SmtpSession, message};
use levee_tests::{LeveeMode, ReplicaSite, Site, spec_with_users};

const USERS: usize = 20;
const PER_USER: usize = 10;
const SESSIONS: usize = USERS * PER_USER;

/// levee's INFO, WARN and ERROR lines (the child logs at trace level), the last 30.
fn levee_notices(site: &Site) -> String {
    let log = site.levee.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["INFO", "WARN", "ERROR"]
                .iter()
                .any(|level| l.contains(level))
        })
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn message_id(user: &str, when: &str) -> String {
    format!("{when}-{user}@example.org")
}

/// One message to each user through levee's relay listener.
fn deliver(site: &Site, users: &[(String, String)], when: &str) {
    let mut smtp = SmtpSession::connect(site.levee.ports.relay).expect("SMTP to levee");
    for (user, _) in users {
        let body = message(&message_id(user, when), 1024);
        let to = format!("{user}@example.test");
        smtp.transfer("sender@example.org", &to, &body)
            .unwrap_or_else(|err| panic!("delivering to {to}: {err}"));
    }
}

/// Waits in IDLE for an EXISTS that counts the new message, ends IDLE, fetches the newest
/// message and checks it is `wanted`. Any BYE, untagged NO or BAD, or a closed connection
/// fails the session.
async fn follow(mut session: IdleSession, wanted: String) -> Result<(), String> {
    let target = session.exists + 1;
    let mut seen = Vec::new();
    let newest = loop {
        let response = tokio::time::timeout(Duration::from_secs(60), session.client.response())
            .await
            .map_err(|_| format!("no EXISTS {target} within 60 s; saw {seen:?}"))?
            .map_err(|err| format!("connection lost in IDLE ({err}); saw {seen:?}"))?;
        if imap_load::is_error(&response) {
            return Err(format!("saw {} in IDLE", show(&response)));
        }
        seen.push(show(&response));
        if let Some(n) = imap_load::exists(&response).filter(|&n| n >= target) {
            break n;
        }
    };
    let done = session.client.done().await.map_err(|e| e.to_string())?;
    if !done.is_ok() || done.untagged.iter().any(|r| imap_load::is_error(r)) {
        return Err(format!(
            "IDLE ended with {} after {:?}",
            done.status, done.untagged
        ));
    }
    let fetched = session
        .client
        .command(&format!("FETCH {newest} BODY.PEEK[]"))
        .await
        .map_err(|e| e.to_string())?;
    if !fetched.is_ok() {
        return Err(format!("FETCH {newest}: {}", fetched.status));
    }
    let body = fetched.untagged.concat();
    if !levee_tests::contains(&body, wanted.as_bytes()) {
        let head = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
        return Err(format!("message {newest} is not {wanted}: {head}"));
    }
    Ok(())
}

#[test]
fn two_hundred_idle_sessions_of_twenty_users_all_migrate_and_none_is_dropped() {
    let replica = ReplicaSite::start_spec(spec_with_users("many-replica", USERS), LeveeMode::Child);
    let failover = "\n[failover]\nprobe_interval = \"100ms\"\nprobe_timeout = \"500ms\"\nfailures = 3\nhold_down = \"5s\"\n";
    let mut primary = Site::start_spec(
        spec_with_users("many-primary", USERS),
        LeveeMode::Child,
        &replica.primary_extra(failover),
    );
    let users: Vec<(String, String)> = primary
        .stack
        .users()
        .iter()
        .filter(|(user, _)| user.starts_with("user"))
        .cloned()
        .collect();
    assert_eq!(users.len(), USERS);

    // One message per user at both sites first, so that every INBOX agrees.
    deliver(&primary, &users, "before");
    for (user, _) in &users {
        let id = [message_id(user, "before")];
        primary.wait_for_messages(user, &id, 30);
        replica.wait_for_messages(user, &id, 30);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let security = Security::tls(&primary.cert_path()).unwrap();
    let imaps = primary.levee.ports.imaps;
    let sessions = runtime
        .block_on(imap_load::open_idle(imaps, &security, &users, SESSIONS, 20))
        .unwrap_or_else(|err| panic!("opening {SESSIONS} sessions through levee: {err}"));
    assert_eq!(sessions.len(), SESSIONS);
    for session in &sessions {
        assert_eq!(session.exists, 1, "{}: INBOX before the kill", session.user);
    }
    let followers: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let user = session.user.clone();
            let wanted = message_id(&user, "after");
            (user, runtime.spawn(follow(session, wanted)))
        })
        .collect();

    primary
        .stack
        .kill_dovecot()
        .expect("kill the primary's Dovecot");
    let killed = Instant::now();
    let migrations = || {
        primary
            .levee
            .metric("levee_imap_migrations_total")
            .unwrap_or(0.0)
    };
    while migrations() < SESSIONS as f64 {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "{} of {SESSIONS} sessions moved after 30 s\n{}",
            migrations(),
            levee_notices(&primary)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{SESSIONS} sessions moved {:?} after the kill",
        killed.elapsed()
    );

    deliver(&primary, &users, "after");
    let mut failed = Vec::new();
    for (i, (user, follower)) in followers.into_iter().enumerate() {
        let outcome = runtime
            .block_on(follower)
            .unwrap_or_else(|err| Err(format!("task failed: {err}")));
        if let Err(err) = outcome {
            failed.push(format!("session {i} ({user}): {err}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {SESSIONS} sessions failed; first ones:\n{}\nlevee log:\n{}",
        failed.len(),
        failed[..failed.len().min(5)].join("\n"),
        levee_notices(&primary)
    );
    assert_eq!(
        migrations(),
        SESSIONS as f64,
        "levee_imap_migrations_total: one migration per session"
    );
    let status = primary.levee.status();
    assert_eq!(
        status["failover"]["active"]["backend"], "replica",
        "{status}"
    );
}
