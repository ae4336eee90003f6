use std::time::Duration;

use imap_codec::imap_types::mailbox::Mailbox;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::imap::state::{Credentials, Selected};

fn idling_in_inbox(password: &str) -> SessionState {
    let mut state = SessionState::default();
    state.login = Some(Credentials {
        user: "alice".into(),
        password: password.into(),
    });
    state.selected = Some(Selected {
        mailbox: Mailbox::Inbox,
        read_only: false,
    });
    state.enabled = vec!["CONDSTORE".into()];
    state.idling = Some("c7".into());
    state
}

#[test]
fn plan_follows_the_session_state() {
    let planned = plan(&idling_in_inbox("secret"), true).unwrap();
    let steps: Vec<(Step, &str)> = planned.iter().map(|p| (p.step, p.tag.as_str())).collect();
    assert_eq!(
        steps,
        [
            (Step::Login, "levee1"),
            (Step::Enable, "levee2"),
            (Step::Select, "levee3"),
            (Step::Listing, "levee4"),
            (Step::Idle, "levee5"),
        ]
    );
    assert!(
        planned
            .iter()
            .all(|p| p.fragments.iter().all(|(_, sync)| !sync))
    );

    // Not listed, and an IDLE the client ended already is not entered again.
    let mut state = idling_in_inbox("secret");
    state.idle_done_sent = true;
    state.enabled.clear();
    let steps: Vec<Step> = plan(&state, false)
        .unwrap()
        .iter()
        .map(|p| p.step)
        .collect();
    assert_eq!(steps, [Step::Login, Step::Select]);

    // A password imap-codec can only send as a literal waits for the server's "+".
    let planned = plan(&idling_in_inbox("caf\u{e9}\"\\"), false).unwrap();
    assert!(planned[0].fragments.iter().any(|(_, sync)| *sync));
}

/// A server that reads until it has `commands` lines (literals' lines included) before it
/// answers any, then answers each in order ("+" for IDLE) and no more. Returns the lines
/// read before it answered, and those read after (until the client closes).
async fn server(
    listener: TcpListener,
    commands: usize,
    literal: bool,
) -> (Vec<String>, Vec<String>) {
    let (stream, _) = listener.accept().await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        .await
        .unwrap();
    let mut read = Vec::new();
    while read.len() < commands {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if literal && line.ends_with("}\r\n") {
            stream.get_mut().write_all(b"+ go on\r\n").await.unwrap();
        }
        read.push(line);
    }
    let mut answers = String::new();
    for line in read.iter().filter(|l| l.starts_with("levee")) {
        let (tag, rest) = line.split_once(' ').unwrap();
        let verb = rest
            .split(' ')
            .next()
            .unwrap()
            .trim_end()
            .to_ascii_uppercase();
        match verb.as_str() {
            "SELECT" => answers.push_str(&format!("* 3 EXISTS\r\n{tag} OK [READ-WRITE] done\r\n")),
            "UID" => answers.push_str(&format!(
                "* ESEARCH (TAG \"{tag}\") UID ALL 4:6\r\n{tag} OK done\r\n"
            )),
            "IDLE" => answers.push_str("+ idling\r\n"),
            _ => answers.push_str(&format!("{tag} OK done\r\n")),
        }
    }
    stream
        .get_mut()
        .write_all(answers.as_bytes())
        .await
        .unwrap();
    let mut after = Vec::new();
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return (read, after),
            Ok(_) => after.push(line),
        }
    }
}

#[tokio::test]
async fn every_command_goes_out_before_the_first_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A rebuild that waited for each answer before the next command would never see one.
    let server = tokio::spawn(server(listener, 5, false));
    let rebuilt = rebuild(
        addr,
        &idling_in_inbox("secret"),
        Duration::from_secs(5),
        true,
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.exists.as_deref(), Some("* 3 EXISTS\r\n"));
    assert_eq!(rebuilt.listed, Some(vec![4, 5, 6]));
    assert_eq!(rebuilt.idle_tag.as_deref(), Some("levee5"));
    assert!(rebuilt.leftover.is_empty());
    drop(rebuilt);
    let (read, after) = server.await.unwrap();
    assert_eq!(read[0], "levee1 LOGIN alice secret\r\n");
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(read[4], "levee5 IDLE\r\n");
}

#[tokio::test]
async fn a_password_sent_as_a_literal_waits_for_each_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut state = idling_in_inbox("pa\"ss\r");
    state.idling = None;
    state.enabled.clear();
    // LOGIN's line and its literal's line; the server answers after them, and the SELECT
    // is sent only once LOGIN is done (the server would wait for it in vain otherwise).
    let server = tokio::spawn(server(listener, 2, true));
    let err = rebuild(addr, &state, Duration::from_secs(2), false)
        .await
        .unwrap_err();
    // The server answered LOGIN and then no more: the rebuild waited at SELECT.
    assert!(err.contains("(at SELECT)"), "{err}");
    let (read, after) = server.await.unwrap();
    assert!(read[0].starts_with("levee1 LOGIN alice {"), "{read:?}");
    assert_eq!(after, ["levee2 SELECT INBOX\r\n"]);
}
