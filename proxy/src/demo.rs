//! `levee demo`: the whole promise on one machine, in under a minute.
//!
//! Starts two real Postfix + Dovecot sites on loopback (installing them with apt-get when
//! asked): a primary with levee in front, and a replica with `levee replica` receiving the
//! journal stream. Sends messages through levee and shows them in the primary mailbox and,
//! moments later, in the replica's; then kills the primary's IMAP server under an open IMAP
//! session ([`crate::demo_failover`]): the session moves to the replica on the same
//! connection with the same UIDs, and mail sent during the outage reaches it there.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use levee_config::{Config, ConfigFile, ReplicaConfig};
use levee_journal::{DeliveryStatus, Journal, JournalOptions};
use tokio_util::sync::CancellationToken;

use crate::mailstack::{self, MailStack, StackSpec};
use crate::smtp::reply::Reply;
use crate::smtp::upstream::{ClientIdentity, Upstream};

pub(crate) fn step(text: &str) {
    println!("==> {text}");
}

pub fn run(install: bool) -> anyhow::Result<()> {
    if mailstack::check_installed().is_err() {
        if !install {
            mailstack::check_installed()?;
        }
        step("installing Postfix and Dovecot (apt-get)");
        mailstack::install_with_apt()?;
    }
    step("starting a primary mail site: Postfix + Dovecot on loopback");
    let mut stack = MailStack::start(StackSpec::new("demo-primary"))?;
    println!(
        "    postfix smtpd {}  dovecot imap {}  (in {})",
        stack.smtp_addr(),
        stack.imap_addr(),
        stack.dir().display()
    );
    step("starting a replica mail site: its own Postfix + Dovecot");
    let replica_stack = MailStack::start(StackSpec::new("demo-replica"))?;
    let work = stack.dir().join("levee");
    std::fs::create_dir_all(&work)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let replica_dir = replica_stack.dir().join("levee-replica");
        std::fs::create_dir_all(&replica_dir)?;
        let (replica_config, link) = replica_config(&replica_dir, &replica_stack)?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let replica_shutdown = CancellationToken::new();
        let replica = tokio::spawn(crate::standby::run(
            replica_config,
            replica_shutdown.clone(),
            Some(ready_tx),
        ));
        let replica_bound = ready_rx.await.context("levee replica did not start")?;
        step(&format!(
            "levee replica listening on {}, applying to the replica's Dovecot over LMTP",
            replica_bound.stream
        ));
        let config = demo_config(
            &work,
            &stack,
            &replica_stack,
            &link.with_addr(replica_bound.stream),
        )?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let levee = tokio::spawn(crate::run(config, shutdown.clone(), Some(ready_tx)));
        let bound = ready_rx.await.context("levee did not start")?;
        let levee_addr = bound.smtp[0];
        step(&format!(
            "levee listening on {levee_addr}, journal in {}",
            work.display()
        ));

        step("sending a message through levee to alice@example.test");
        let first = "<demo-1@levee.example>";
        let sent_at = Instant::now();
        let reply = send(levee_addr, first).await?;
        println!("    levee answered: {}", reply.summary());
        let arrived = wait_for(&stack, first, Duration::from_secs(15)).await?;
        println!("    delivered to alice's INBOX:\n{}", indent(&arrived));
        wait_for(&replica_stack, first, Duration::from_secs(15)).await?;
        println!(
            "    and at the replica site, in alice's INBOX there too {:.0} ms after sending (journal streamed, applied over LMTP)",
            sent_at.elapsed().as_secs_f64() * 1000.0
        );

        let second = "<demo-2@levee.example>";
        send(levee_addr, second).await?;
        wait_for(&replica_stack, second, Duration::from_secs(15)).await?;
        let login = crate::imap::state::Credentials {
            user: "alice".into(),
            password: stack
                .users()
                .iter()
                .find(|(user, _)| user == "alice")
                .map(|(_, password)| password.clone())
                .context("alice")?,
        };
        crate::demo_failover::run(bound.imap[0], &mut stack, login, |id| async move {
            let reply = send(levee_addr, id).await?;
            println!("    levee answered: {}", reply.summary());
            anyhow::ensure!(reply.is_positive(), "levee refused mail during the outage");
            Ok(())
        })
        .await?;
        shutdown.cancel();
        levee.await??;
        replica_shutdown.cancel();
        replica.await??;
        anyhow::Ok(())
    })?;
    let journal = Journal::open(&work.join("data/journal"), JournalOptions::default())?;
    let report = journal.verify()?;
    step(&format!(
        "journal: {} records, hash chain {}",
        journal.head(),
        if report.first_broken.is_none() {
            "verified"
        } else {
            "BROKEN"
        }
    ));
    for seq in 1..=journal.head() {
        if let (Some(record), Some(state)) = (journal.get(seq)?, journal.state(seq)?) {
            println!(
                "    seq {seq}: sha256 {} state {:?}",
                hex_short(&record.body_sha256),
                state.status
            );
            if state.status != DeliveryStatus::Delivered {
                bail!("record {seq} is not delivered");
            }
        }
    }
    step("done: no acknowledged message lost");
    stack.stop();
    Ok(())
}

/// Where the primary streams to, and how it proves itself.
struct Link {
    addr: String,
    ca: std::path::PathBuf,
    token: std::path::PathBuf,
}

impl Link {
    fn with_addr(self, addr: std::net::SocketAddr) -> Link {
        Link {
            addr: addr.to_string(),
            ..self
        }
    }
}

fn replica_config(dir: &Path, stack: &MailStack) -> anyhow::Result<(ReplicaConfig, Link)> {
    let (cert, key) = crate::tls::write_self_signed(dir, &["replica.levee.demo"])?;
    let token = dir.join("replication.token");
    let secret: String = rand::random::<[u8; 24]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_private(&token, &secret)?;
    let text = format!(
        r#"
[node]
id = "demo-replica"
data_dir = "{data}"

[replica]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
token_file = "{token}"

[apply]
lmtp = "{lmtp}"
local_domains = ["{domain}"]
retry = "1s"
imap = "{imap}"
master_user = "{master_user}"
master_password_file = "{master_password}"
"#,
        data = dir.join("data").display(),
        cert = cert.display(),
        key = key.display(),
        token = token.display(),
        lmtp = stack.lmtp_addr(),
        domain = stack.domain(),
        imap = stack.imap_addr(),
        master_user = stack.master_user(),
        master_password = stack.master_password_file().display(),
    );
    std::fs::write(dir.join("replica.toml"), &text)?;
    let link = Link {
        addr: String::new(),
        ca: cert,
        token,
    };
    Ok((ReplicaConfig::from_toml(&text)?, link))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

fn demo_config(
    work: &Path,
    stack: &MailStack,
    replica: &MailStack,
    link: &Link,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[node]
id = "demo"
data_dir = "{data}"

[upstream.primary]
smtp = "{smtp}"
submission = "{submission}"
imap = "{imap}"

[upstream.replica]
smtp = "{replica_smtp}"
imap = "{replica_imap}"

[imap]
allow_plaintext_auth = true

[[imap.listen]]
addr = "127.0.0.1:0"
tls = "none"

[smtp]
hostname = "levee.demo"
local_domains = ["{domain}"]

[[smtp.listen]]
addr = "127.0.0.1:0"
kind = "relay"
tls = "none"

[delivery]
retry_initial = "1s"
retry_max = "2s"
unconfirmed_wait = "15s"

[replication]
replica = "{replica}"
server_name = "replica.levee.demo"
ca = "{ca}"
token_file = "{token}"
"#,
        replica = link.addr,
        ca = link.ca.display(),
        token = link.token.display(),
        data = work.join("data").display(),
        smtp = stack.smtp_addr(),
        submission = stack.submission_addr(),
        imap = stack.imap_addr(),
        replica_smtp = replica.smtp_addr(),
        replica_imap = replica.imap_addr(),
        domain = stack.domain(),
    );
    std::fs::write(work.join("levee.toml"), &text)?;
    Ok(Config::from_toml(&text)?)
}

async fn send(levee: std::net::SocketAddr, message_id: &str) -> anyhow::Result<Reply> {
    let mut client = Upstream::open(
        levee,
        Duration::from_secs(5),
        Duration::from_secs(30),
        "demo-client.example",
        &ClientIdentity::default(),
    )
    .await?;
    for line in [
        "MAIL FROM:<bob@example.org>\r\n",
        "RCPT TO:<alice@example.test>\r\n",
    ] {
        let reply = client.command(line.as_bytes()).await?;
        if !reply.is_positive() {
            return Ok(reply);
        }
    }
    let body = format!(
        "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.test>\r\nSubject: organ offer, reply within the hour\r\nMessage-ID: {message_id}\r\n\r\nKidney available, reply within the hour.\r\n"
    );
    let reply = client.send_body(body.as_bytes()).await?;
    client.quit().await;
    Ok(reply)
}

async fn wait_for(stack: &MailStack, message_id: &str, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        for message in stack.inbox_messages("alice")? {
            let text = String::from_utf8_lossy(&message).into_owned();
            if text.contains(message_id) {
                return Ok(text);
            }
        }
        if Instant::now() > deadline {
            bail!("{message_id} did not arrive within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("      | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
