//! A planned switchover and a failback under load, against a real site pair: IMAP clients
//! in IDLE and SMTP senders that retry on 4xx (as every MTA does) keep going throughout.
//! Afterwards no acknowledged message is missing or doubled in either site's mailboxes,
//! the sessions moved both ways on their connections with the UIDs they knew, the epoch
//! went up, and the admin's alert is readable over IMAP. A failback while the primary's
//! MTA is down is refused (nothing switches); once it is back, the failback copies the
//! outage's mail to the primary first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use levee_proxy::admin::Role;
use levee_tests::admin::{AdminSetup, Api, FAST_FAILOVER};
use levee_tests::imap_load::{ImapClient, Security, show};
use levee_tests::load::{SmtpSession, message};
use levee_tests::{LeveeMode, ReplicaSite, Site, contains, tail};
use serde_json::Value;

const USERS: [&str; 2] = ["alice", "bob"];
const SESSIONS_PER_USER: usize = 4;

/// What one sender saw: every acknowledged (message id, user), and how many 4xx it got.
type Sent = (Vec<(String, String)>, usize);

/// SMTP senders that retry a message on any 4xx until it is acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Sent>>,
}

impl Load {
    fn start(addr: SocketAddr, senders: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..senders)
            .map(|t| {
                let (stop, tag) = (stop.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut deferred = 0;
                    let mut session = SmtpSession::connect(addr).expect("SMTP to levee");
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{tag}-{t}-{i}@load.example.org");
                        let to = format!("{}@example.test", USERS[i % USERS.len()]);
                        match session.send("load@example.org", &to, &message(&id, 2_000)) {
                            Ok(_) => {
                                acked.push((id, USERS[i % USERS.len()].to_string()));
                                i += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Err(err) if err.to_string().contains("got \"4") => {
                                deferred += 1;
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            Err(err) => panic!("SMTP load: {err}"),
                        }
                    }
                    (acked, deferred)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the senders; every acknowledged (message id, user), and the 4xx count.
    fn finish(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut deferred = 0;
        for thread in self.threads {
            let (acked, d) = thread.join().expect("load thread");
            all.extend(acked);
            deferred += d;
        }
        (all, deferred)
    }
}

/// How many messages in `user`'s INBOX carry each of `ids` (0 when missing).
fn counts(stack: &levee_proxy::mailstack::MailStack, user: &str, ids: &[&str]) -> Vec<usize> {
    let inbox = stack.inbox_messages(user).expect("read maildir");
    ids.iter()
        .map(|id| inbox.iter().filter(|m| contains(m, id.as_bytes())).count())
        .collect()
}

/// Waits until each acknowledged message is in its user's INBOX at `stack` exactly once.
fn exactly_once(stack: &levee_proxy::mailstack::MailStack, acked: &[(String, String)], site: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        let mut doubled = Vec::new();
        for user in USERS {
            let ids: Vec<&str> = (acked.iter())
                .filter(|(_, u)| u == user)
                .map(|(id, _)| id.as_str())
                .collect();
            for (id, n) in ids.iter().zip(counts(stack, user, &ids)) {
                match n {
                    0 => missing.push(*id),
                    1 => {}
                    _ => doubled.push(*id),
                }
            }
        }
        assert!(doubled.is_empty(), "{site}: delivered twice: {doubled:?}");
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{site}: {} of {} acknowledged messages missing (first {})\n{}",
            missing.len(),
            acked.len(),
            missing[0],
            tail(&stack.postfix_log(), 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// UID -> Message-ID of every message in the selected mailbox, read by message number:
/// the numbers must run 1..n in UID order, as IMAP numbers messages (whatever order the
/// server behind levee stored them in).
async fn uids(client: &mut ImapClient) -> BTreeMap<u32, String> {
    let reply = (client
        .ok("FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        .await)
        .expect("FETCH");
    let mut numbered = Vec::new();
    for response in &reply.untagged {
        let text = String::from_utf8_lossy(response);
        let number = text
            .strip_prefix("* ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        let uid = text
            .split("UID ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u32>().ok());
        let id = text
            .split('<')
            .nth(1)
            .and_then(|rest| rest.split('>').next())
            .map(str::to_string);
        if let (Some(number), Some(uid), Some(id)) = (number, uid, id) {
            numbered.push((number, uid, id));
        }
    }
    numbered.sort_unstable();
    for (at, (number, _, _)) in numbered.iter().enumerate() {
        assert_eq!(*number as usize, at + 1, "message numbers skip");
    }
    assert!(
        numbered.windows(2).all(|w| w[0].1 < w[1].1),
        "message numbers out of UID order: {:?}",
        numbered.iter().map(|(n, u, _)| (n, u)).collect::<Vec<_>>()
    );
    numbered.into_iter().map(|(_, uid, id)| (uid, id)).collect()
}

/// Ends each session's IDLE (nothing but OK), and returns what each sees now.
async fn wake(clients: &mut [ImapClient], site: &Site) -> Vec<BTreeMap<u32, String>> {
    let mut seen = Vec::new();
    for client in clients.iter_mut() {
        let reply = client.done().await.expect("DONE");
        assert!(reply.is_ok(), "IDLE ended {}", reply.status);
        for untagged in &reply.untagged {
            let text = show(untagged);
            assert!(
                !text.contains("BYE") && !text.contains(" NO ") && !text.contains(" BAD "),
                "a client saw {text}\n{}",
                tail(&site.levee.log(), 30)
            );
        }
        seen.push(uids(client).await);
        client.idle().await.expect("IDLE again");
    }
    seen
}

fn active(api: &Api) -> (String, u64) {
    let status = api.call("GET", "/v1/status", None);
    let a = &status["body"]["failover"]["active"];
    (
        a["backend"].as_str().unwrap_or("").to_owned(),
        a["epoch"].as_u64().unwrap_or(0),
    )
}

#[test]
fn switchover_and_failback_under_load_lose_nothing() {
    let admin = AdminSetup::new(&[("ops-laptop", Role::Operator)]);
    let (port, token) = (admin.port, admin.tokens[0].clone());
    let replica = ReplicaSite::start("switchload-replica", LeveeMode::Child);
    let extra = replica.primary_extra(&format!(
        "{FAST_FAILOVER}{}\n[alerts]\nto = [\"carol@example.test\"]\n",
        admin.section("drain_timeout = \"3s\"")
    ));
    let mut primary = Site::start_with("switchload-primary", LeveeMode::Child, &extra);
    let api = Api {
        port,
        ca: primary.cert_path(),
        token: token.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let security = Security::tls(&primary.cert_path()).unwrap();

    // IMAP sessions in IDLE for both users, and SMTP load to both.
    let load = Load::start(primary.levee.ports.relay, 3, "before");
    std::thread::sleep(Duration::from_millis(800));
    let mut clients = runtime.block_on(async {
        let mut clients = Vec::new();
        for user in USERS.iter().cycle().take(USERS.len() * SESSIONS_PER_USER) {
            let mut c = ImapClient::connect(primary.levee.ports.imaps, &security)
                .await
                .expect("IMAP to levee");
            c.login(user, &primary.password(user)).await.expect("LOGIN");
            c.select("INBOX").await.expect("SELECT");
            c.idle().await.expect("IDLE");
            clients.push(c);
        }
        clients
    });
    std::thread::sleep(Duration::from_millis(700));
    let before_switch = runtime.block_on(wake(&mut clients, &primary));
    let (_, epoch0) = active(&api);

    // The planned switchover, from the CLI, while mail keeps coming.
    let token_file = admin.secrets.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
            .args(args)
            .env("LEVEE_ADMIN_URL", format!("https://localhost:{port}"))
            .env("LEVEE_TOKEN_FILE", &token_file)
            .env("LEVEE_ADMIN_CA", primary.cert_path())
            .output()
            .unwrap()
    };
    let switched = cli(&[
        "switchover",
        "--to",
        "replica",
        "--reason",
        "planned drill",
        "--json",
    ]);
    assert!(
        switched.status.success(),
        "{switched:?}\n{}",
        tail(&primary.levee.log(), 30)
    );
    let answer: Value = serde_json::from_slice(&switched.stdout).expect("JSON from the CLI");
    assert_eq!(answer["active"]["backend"], "replica", "{answer}");
    assert!(
        answer["active"]["epoch"].as_u64().unwrap() > epoch0,
        "{answer}"
    );
    // The replica's mail server had every record before the switch, not only its journal.
    let drained = &answer["drained"];
    assert!(
        drained["replica_applied"].as_u64().unwrap() >= drained["head"].as_u64().unwrap(),
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let (acked, deferred) = load.finish();
    eprintln!(
        "switchover: {} messages acknowledged, {deferred} deferred (4xx) while draining; {}",
        acked.len(),
        drained
    );
    // New transactions waited at MAIL FROM while the switch drained: no sender saw a 4xx.
    assert_eq!(deferred, 0, "senders were deferred during the switchover");

    // Nothing acknowledged is missing or doubled at the replica; the primary's MTA got
    // the ones accepted after the switch too (copied in the background).
    exactly_once(&replica.stack, &acked, "replica");
    exactly_once(&primary.stack, &acked, "primary");

    // The sessions moved on their connections and kept their UIDs.
    let moved = runtime.block_on(wake(&mut clients, &primary));
    for (old, new) in before_switch.iter().zip(&moved) {
        for (uid, id) in old {
            assert_eq!(new.get(uid), Some(id), "UID {uid} changed its message");
        }
    }
    assert!(
        primary
            .levee
            .metric("levee_imap_migrations_total")
            .unwrap_or(0.0)
            >= clients.len() as f64,
        "{}",
        tail(&primary.levee.log(), 30)
    );

    // The audit log and the admin's alert, read over IMAP at the site now active.
    let audit = api.call("GET", "/v1/audit?limit=20", None);
    assert!(
        audit["body"]
            .to_string()
            .contains("switchover by ops-laptop: planned drill"),
        "{audit}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let inbox = runtime.block_on(async {
            let mut c = ImapClient::connect(primary.levee.ports.imaps, &security)
                .await
                .expect("IMAP to levee");
            c.login("carol", &primary.password("carol"))
                .await
                .expect("LOGIN");
            c.select("INBOX").await.expect("SELECT");
            c.ok("FETCH 1:* BODY.PEEK[]").await.map(|r| r.untagged)
        });
        let found = inbox.ok().and_then(|responses| {
            responses
                .into_iter()
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .find(|r| r.contains("planned drill"))
        });
        if let Some(alert) = found {
            break alert;
        }
        assert!(
            Instant::now() < deadline,
            "no alert reached carol over IMAP"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(alert.contains("replica"), "{alert}");

    // An outage of the primary's MTA: mail keeps arriving at the replica, and a failback
    // is refused, with nothing switched, while the primary cannot take that mail.
    primary
        .stack
        .stop_postfix()
        .expect("stop the primary's Postfix");
    let outage = Load::start(primary.levee.ports.relay, 2, "outage");
    std::thread::sleep(Duration::from_millis(1_500));
    let (outage_acked, _) = outage.finish();
    assert!(!outage_acked.is_empty());
    exactly_once(&replica.stack, &outage_acked, "replica");
    // What the clients know now, the outage's mail included, under the UIDs shown to them.
    std::thread::sleep(Duration::from_millis(500));
    let before_back = runtime.block_on(wake(&mut clients, &primary));
    let refused = api.call("POST", "/v1/failback", Some(r#"{"reason": "too early"}"#));
    assert_eq!(refused["status"], 409, "{refused}");
    assert!(
        refused["body"]["error"].to_string().contains("primary"),
        "{refused}"
    );
    let (site, epoch1) = active(&api);
    assert_eq!(site, "replica");

    // The primary's MTA back: the failback copies the outage's mail there first.
    primary
        .stack
        .start_postfix()
        .expect("restart the primary's Postfix");
    std::thread::sleep(Duration::from_millis(1_200)); // the probes see it healthy
    let back = api.call(
        "POST",
        "/v1/failback",
        Some(r#"{"reason": "primary repaired"}"#),
    );
    assert_eq!(
        back["status"],
        200,
        "{back}\n{}",
        tail(&primary.levee.log(), 30)
    );
    assert_eq!(back["body"]["active"]["backend"], "primary", "{back}");
    assert!(
        back["body"]["active"]["epoch"].as_u64().unwrap() > epoch1,
        "{back}"
    );
    exactly_once(&primary.stack, &outage_acked, "primary");
    exactly_once(&primary.stack, &acked, "primary");

    // Clients moved back transparently: same connections, the UIDs they knew, the mail
    // that arrived during the outage included.
    let home = runtime.block_on(wake(&mut clients, &primary));
    for ((old, new), before) in before_back.iter().zip(&home).zip(&moved) {
        assert!(old.len() > before.len(), "the outage's mail was not seen");
        for (uid, id) in old {
            assert_eq!(
                new.get(uid),
                Some(id),
                "after failback UID {uid} changed its message"
            );
        }
    }
    // So does a client that connects afresh after the failback.
    let fresh = runtime.block_on(async {
        let mut c = ImapClient::connect(primary.levee.ports.imaps, &security)
            .await
            .expect("IMAP to levee");
        c.login(USERS[0], &primary.password(USERS[0]))
            .await
            .expect("LOGIN");
        c.select("INBOX").await.expect("SELECT");
        uids(&mut c).await
    });
    for (uid, id) in &before_back[0] {
        assert_eq!(
            fresh.get(uid),
            Some(id),
            "a new session after failback: UID {uid} changed its message"
        );
    }
    let log = primary.levee.log();
    eprintln!(
        "failback: {} mailbox(es) needed their UIDs presented at the primary",
        log.matches("UIDs clients saw on the replica presented at the primary")
            .count()
    );
    let status = api.call("GET", "/v1/status", None);
    assert_eq!(
        status["body"]["failover"]["primary_resync"]["pending"], 0,
        "{status}"
    );
}
