use levee_journal::{ClientInfo, JournalOptions, MessageRecord, NewRecord};

use super::*;
use crate::compliance::select::Selection;

/// 2026-11-22T00:00:00Z.
const DAY: u64 = 1_795_305_600_000;
const HOUR: u64 = 3_600_000;

fn message(from: &str, to: &str, id: &str, subject: &str, user: Option<&str>) -> MessageRecord {
    MessageRecord {
        mail_from: from.into(),
        rcpt_to: vec![to.into()],
        client: ClientInfo {
            authenticated_user: user.map(str::to_string),
            listener: if user.is_some() {
                "submission"
            } else {
                "relay"
            }
            .into(),
            ..ClientInfo::default()
        },
        message_id: Some(id.into()),
        body: format!("Message-ID: <{id}>\r\nSubject: {subject}\r\n\r\nbody\r\n").into_bytes(),
    }
}

/// Five messages over three days, and an audit record between them.
async fn journal(dir: &std::path::Path) -> Journal {
    let journal = Journal::open(dir, JournalOptions::default()).unwrap();
    let records = [
        (
            DAY,
            message(
                "Donor@Hospital.org",
                "opo@example.test",
                "a@x",
                "Kidney offer",
                None,
            ),
        ),
        (
            DAY + HOUR,
            message(
                "lab@hospital.org",
                "opo@example.test",
                "b@x",
                "Crossmatch results",
                None,
            ),
        ),
        (
            DAY + 25 * HOUR,
            message(
                "opo@example.test",
                "surgeon@center.org",
                "c@x",
                "Re: Kidney offer accepted",
                Some("alice"),
            ),
        ),
        (
            DAY + 26 * HOUR,
            message(
                "opo@example.test",
                "lab@hospital.org",
                "d@x",
                "Courier booked",
                Some("bob"),
            ),
        ),
        (
            DAY + 49 * HOUR,
            message(
                "donor@hospital.org",
                "bob@example.test",
                "e@x",
                "Thanks",
                None,
            ),
        ),
    ];
    for (at, m) in records {
        journal
            .append(NewRecord {
                time_ms: at,
                kind: RecordKind::Message(m),
            })
            .await
            .unwrap();
        journal
            .append(NewRecord {
                time_ms: at,
                kind: RecordKind::Audit(levee_journal::AuditRecord::default()),
            })
            .await
            .unwrap();
    }
    journal
}

fn args() -> SearchArgs {
    SearchArgs {
        source: Source {
            config: None,
            journal: None,
            key_file: None,
            json: true,
        },
        selection: Selection::default(),
        limit: 50,
        after: 0,
    }
}

fn ids(journal: &Journal, args: &SearchArgs) -> Vec<String> {
    let filter = Filter::parse(&args.selection).unwrap();
    let (hits, _) = search(journal, &filter, args.after, args.limit as usize).unwrap();
    hits.iter()
        .map(|r| match &r.kind {
            RecordKind::Message(m) => m.message_id.clone().unwrap(),
            _ => unreachable!("only messages match"),
        })
        .collect()
}

#[tokio::test]
async fn each_filter_finds_its_messages_and_filters_combine() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path()).await;
    let with = |f: &dyn Fn(&mut SearchArgs)| {
        let mut a = args();
        f(&mut a);
        ids(&j, &a)
    };
    assert_eq!(with(&|_| {}).len(), 5);
    assert_eq!(
        with(&|a| a.selection.from = Some("donor@HOSPITAL.org".into())),
        ["a@x", "e@x"]
    );
    assert_eq!(
        with(&|a| a.selection.to = Some("lab@hospital.org".into())),
        ["d@x"]
    );
    assert_eq!(
        with(&|a| a.selection.message_id = Some("<c@x>".into())),
        ["c@x"]
    );
    assert_eq!(
        with(&|a| a.selection.message_id = Some("c@x".into())),
        ["c@x"]
    );
    assert_eq!(
        with(&|a| a.selection.subject = Some("kidney OFFER".into())),
        ["a@x", "c@x"]
    );
    assert_eq!(with(&|a| a.selection.user = Some("bob".into())), ["d@x"]);
    assert_eq!(
        with(&|a| a.selection.direction = Some("outbound".into())),
        ["c@x", "d@x"]
    );
    assert_eq!(
        with(&|a| a.selection.direction = Some("inbound".into())),
        ["a@x", "b@x", "e@x"]
    );
    // Days: the 23rd alone, as a day and as instants; since alone, until alone.
    assert_eq!(
        with(&|a| {
            a.selection.since = Some("2026-11-23".into());
            a.selection.until = Some("2026-11-23".into());
        }),
        ["c@x", "d@x"]
    );
    assert_eq!(
        with(&|a| {
            a.selection.since = Some("2026-11-23T01:30:00Z".into());
            a.selection.until = Some("2026-11-24T01:00:01Z".into());
        }),
        ["d@x", "e@x"]
    );
    assert_eq!(
        with(&|a| a.selection.since = Some("2026-11-24".into())),
        ["e@x"]
    );
    assert_eq!(
        with(&|a| a.selection.until = Some("2026-11-22".into())),
        ["a@x", "b@x"]
    );
    // Combined: an index lookup narrowed by a checked filter.
    assert_eq!(
        with(&|a| {
            a.selection.from = Some("opo@example.test".into());
            a.selection.subject = Some("kidney".into());
        }),
        ["c@x"]
    );
    assert!(with(&|a| a.selection.message_id = Some("nobody@x".into())).is_empty());
}

#[tokio::test]
async fn pages_continue_after_the_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path()).await;
    let filter = Filter::parse(&args().selection).unwrap();
    let (first, next) = search(&j, &filter, 0, 2).unwrap();
    assert_eq!(first.len(), 2);
    let next = next.expect("more to come");
    assert_eq!(next, first[1].seq);
    let (second, next) = search(&j, &filter, next, 2).unwrap();
    assert_eq!(second.len(), 2);
    let (third, last) = search(&j, &filter, next.unwrap(), 2).unwrap();
    assert_eq!((third.len(), last), (1, None));
    // The same pages through an index.
    let mut by_sender = args();
    by_sender.selection.from = Some("opo@example.test".into());
    let filter = Filter::parse(&by_sender.selection).unwrap();
    let (page, next) = search(&j, &filter, 0, 1).unwrap();
    let (rest, end) = search(&j, &filter, next.unwrap(), 1).unwrap();
    assert_ne!(page[0].seq, rest[0].seq);
    assert_eq!(end, None);
}

#[test]
fn bad_times_are_clear_errors() {
    for (since, until, want) in [
        (Some("yesterday"), None, "invalid date \"yesterday\""),
        (Some("2026-13-01"), None, "invalid date"),
        (None, Some("2026-11-22T25:00:00Z"), "invalid date"),
        (
            Some("2026-11-23"),
            Some("2026-11-22"),
            "--since must come before --until",
        ),
    ] {
        let mut a = args();
        a.selection.since = since.map(str::to_string);
        a.selection.until = until.map(str::to_string);
        let err = Filter::parse(&a.selection).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}
