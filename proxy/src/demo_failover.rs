//! The demo's last act: alice has her INBOX open through levee when the primary's IMAP
//! server dies. levee moves her session to the replica on the same connection; she keeps
//! her UIDVALIDITY and UIDs, and mail sent during the outage reaches her there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::imap::conn::Conn;
use crate::imap::identity::{command, fetch_known};
use crate::imap::state::Credentials;
use crate::imap::tracker::uid_codes;
use crate::mailstack::MailStack;

/// Runs the act; `send` sends one message through levee's SMTP listener.
pub async fn run<F, Fut>(
    levee_imap: SocketAddr,
    primary: &mut MailStack,
    login: Credentials,
    send: F,
) -> anyhow::Result<()>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    super::demo::step("alice opens her INBOX through levee (IMAP)");
    let mut conn = Conn::open(levee_imap).await?;
    conn.login(&login).await?;
    let selected = conn.run(command("SELECT INBOX")).await?;
    let (validity, _) = uid_codes(&selected);
    let before: Vec<u32> = fetch_known(&mut conn, 1)
        .await?
        .iter()
        .map(|k| k.uid)
        .collect();
    println!("    UIDVALIDITY {validity}, UIDs {before:?}");

    super::demo::step("the primary's IMAP server dies (Dovecot killed)");
    primary.kill_dovecot()?;
    let killed = Instant::now();
    // Her next command is answered once levee has moved the session.
    tokio::time::timeout(Duration::from_secs(15), conn.run(command("NOOP")))
        .await
        .context("the session did not move")?
        .context("alice's session saw an error")?;
    let moved = killed.elapsed();
    println!(
        "    alice's next command was answered {:.0} ms after the kill, on the same connection, by the replica",
        moved.as_secs_f64() * 1000.0
    );
    let selected = conn.run(command("SELECT INBOX")).await?;
    let (validity_after, _) = uid_codes(&selected);
    let after: Vec<u32> = fetch_known(&mut conn, 1)
        .await?
        .iter()
        .map(|k| k.uid)
        .collect();
    println!(
        "    UIDVALIDITY {validity_after}, UIDs {after:?}  (what her mail client cached still holds)"
    );
    if validity_after != validity || after != before {
        bail!("the replica showed alice other UIDs");
    }

    super::demo::step("a message sent during the outage reaches her at the replica");
    send("<demo-3@levee.example>").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = fetch_known(&mut conn, 1).await?;
        if let Some(new) = known
            .iter()
            .find(|k| k.identity.message_id.as_deref() == Some("<demo-3@levee.example>"))
        {
            println!(
                "    new message, UID {} (above every UID she knew)",
                new.uid
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("the message sent during the outage did not arrive");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.run(command("LOGOUT")).await.ok();
    Ok(())
}
