//! The journal over the admin API against a real site: with a viewer's token, mail sent
//! through levee is found by recipient and by subject words, a page at a time; one message
//! is fetched by seq byte for byte; a selection comes back as an mbox holding each message
//! as sent; bad requests get clear 4xx answers; and every search and export is an audit
//! record naming the token. With an operator's token, a legal hold is placed on a
//! selection and released, each once, as audit records naming the token.

use std::time::{Duration, Instant};

use levee_proxy::admin::Role;
use levee_proxy::compliance::export::mbox_unquote;
use levee_tests::admin::AdminSetup;
use levee_tests::clients::{RawAnswer, admin_call, admin_get_raw};
use levee_tests::{LeveeMode, Site, sample_message};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

struct Api<'a> {
    port: u16,
    ca: &'a std::path::Path,
    token: Option<&'a str>,
}

impl Api<'_> {
    /// `GET path`: the status and the JSON body.
    fn get(&self, path: &str) -> (u64, Value) {
        let answer = admin_call(self.port, Some(self.ca), self.token, "GET", path, None);
        (answer["status"].as_u64().unwrap(), answer["body"].clone())
    }

    /// A search's results as (seq, Message-ID), and its `next_after`.
    fn search(&self, query: &str) -> (Vec<(u64, String)>, Option<u64>) {
        let (status, body) = self.get(&format!("/v1/journal/search?{query}"));
        assert_eq!(status, 200, "{query}: {body}");
        let found = (body["results"].as_array().unwrap().iter())
            .map(|r| {
                let id = r["message_id"].as_str().unwrap_or("").to_owned();
                (r["seq"].as_u64().unwrap(), id)
            })
            .collect();
        (found, body["next_after"].as_u64())
    }

    /// `POST path` with `body`: the status and the JSON answer.
    fn post(&self, path: &str, body: &Value) -> (u64, Value) {
        let body = body.to_string();
        let answer = admin_call(
            self.port,
            Some(self.ca),
            self.token,
            "POST",
            path,
            Some(&body),
        );
        (answer["status"].as_u64().unwrap(), answer["body"].clone())
    }

    /// Every hold, as `GET /v1/journal/holds` lists them.
    fn holds(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/journal/holds");
        assert_eq!(status, 200, "{body}");
        body["holds"].as_array().unwrap().clone()
    }

    fn raw(&self, path: &str) -> RawAnswer {
        admin_get_raw(self.port, Some(self.ca), self.token, path)
    }

    /// The status of a refused `GET`, which must carry a JSON error naming `says`.
    fn refused(&self, path: &str, says: &str) -> u64 {
        let (status, body) = self.get(path);
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{path}: {status} {body}");
        status
    }
}

/// The messages of an mboxrd file: the `From ` line and the quoted body of each.
fn mbox_messages(mbox: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    for line in mbox.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            messages.push((
                String::from_utf8_lossy(line).trim_end().to_owned(),
                Vec::new(),
            ));
        } else {
            let (_, body) = messages
                .last_mut()
                .expect("an mbox starts with a From line");
            body.extend_from_slice(line);
        }
    }
    messages
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the admin API never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn viewer_searches_fetches_and_exports_the_journal() {
    let admin = AdminSetup::new(&[("compliance-desk", Role::Viewer)]);
    let site = Site::start_with("admin-journal", LeveeMode::InProcess, &admin.section(""));
    wait_for_port(admin.port);
    let ca = site.cert_path();
    let api = Api {
        port: admin.port,
        ca: &ca,
        token: Some(&admin.tokens[0]),
    };
    let anonymous = Api { token: None, ..api };

    let to_alice = site.send_through_levee(
        &["offer-1@hospital.example", "offer-2@hospital.example"],
        ALICE,
        "alice",
    );
    let to_bob = site.send_through_levee(&["liver-3@hospital.example"], BOB, "bob");
    // (Message-ID, the bytes sent), in the order sent.
    let sent: Vec<(String, Vec<u8>)> = (to_alice.iter().map(|id| (id, ALICE)))
        .chain(to_bob.iter().map(|id| (id, BOB)))
        .map(|(id, rcpt)| (id.clone(), sample_message(id, rcpt)))
        .collect();

    // Everything, oldest first; then each filter finds exactly its messages.
    let (all, more) = api.search("");
    assert_eq!(more, None);
    let ids: Vec<&str> = all.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "offer-1@hospital.example",
            "offer-2@hospital.example",
            "liver-3@hospital.example"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");
    assert_eq!(api.search(&format!("rcpt={ALICE}")).0, all[..2]);
    assert_eq!(api.search("rcpt=BOB@example.test").0, all[2..]);
    assert_eq!(api.search("subject=offer-2").0, all[1..2]);
    let bracketed = "message_id=%3Coffer-2%40hospital.example%3E";
    assert_eq!(api.search(bracketed).0, all[1..2]);
    assert_eq!(api.search("subject=KIDNEY+liver-3").0, all[2..]);
    assert_eq!(
        api.search("from=sender@example.org&direction=inbound").0,
        all
    );
    assert!(api.search("direction=outbound").0.is_empty());
    assert!(api.search("until=2000-01-01").0.is_empty());
    let (status, page) = api.get(&format!("/v1/journal/search?rcpt={BOB}"));
    assert_eq!(status, 200, "{page}");
    let hit = &page["results"][0];
    assert_eq!(hit["to"], serde_json::json!([BOB]), "{page}");
    assert_eq!(hit["size"], sent[2].1.len(), "{page}");
    assert!(hit["time"].as_str().unwrap().ends_with('Z'), "{page}");

    // A page at a time.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let (page, next) = api.search(&format!("limit=1&after={after}"));
        assert_eq!(page.len(), 1, "after {after}");
        paged.extend(page);
        match next {
            Some(seq) => after = seq,
            None => break,
        }
    }
    assert_eq!(paged, all);

    // One message, byte for byte as sent.
    for ((seq, id), (sent_id, body)) in all.iter().zip(&sent) {
        assert_eq!(id, sent_id);
        let message = api.raw(&format!("/v1/journal/messages/{seq}"));
        assert_eq!(message.status, 200, "{message:?}");
        assert_eq!(message.body, *body, "message {seq} altered");
        assert_eq!(message.header("content-type"), Some("message/rfc822"));
        assert_eq!(
            message.header("x-levee-seq"),
            Some(seq.to_string().as_str())
        );
        let sha256: String = Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(message.header("x-levee-sha256"), Some(sha256.as_str()));
    }

    // The selection as an mbox: each message as sent, under its own From line.
    let mbox = api.raw("/v1/journal/export");
    assert_eq!(mbox.status, 200, "{mbox:?}");
    assert_eq!(mbox.header("content-type"), Some("application/mbox"));
    assert_eq!(mbox.header("x-levee-count"), Some("3"));
    assert_eq!(
        mbox.header("content-length"),
        Some(mbox.body.len().to_string().as_str())
    );
    let exported = mbox_messages(&mbox.body);
    assert_eq!(exported.len(), sent.len());
    for ((from_line, quoted), (id, body)) in exported.iter().zip(&sent) {
        assert!(
            from_line.starts_with("From sender@example.org "),
            "{from_line}"
        );
        assert_eq!(mbox_unquote(quoted, body.len()), *body, "{id} altered");
    }
    let for_bob = api.raw(&format!("/v1/journal/export?rcpt={BOB}"));
    assert_eq!(for_bob.header("x-levee-count"), Some("1"), "{for_bob:?}");
    let exported = mbox_messages(&for_bob.body);
    assert_eq!(exported.len(), 1);
    assert_eq!(mbox_unquote(&exported[0].1, sent[2].1.len()), sent[2].1);

    // Refusals: clear JSON errors.
    for path in [
        "/v1/journal/search",
        "/v1/journal/messages/1",
        "/v1/journal/export",
    ] {
        assert_eq!(anonymous.refused(path, "bearer token"), 401, "{path}");
    }
    for (path, says) in [
        ("/v1/journal/search?since=yesterday", "invalid date"),
        ("/v1/journal/export?until=2026-13-01", "invalid date"),
        ("/v1/journal/search?colour=red", "unknown field `colour`"),
        ("/v1/journal/export?colour=red", "unknown field `colour`"),
        ("/v1/journal/search?limit=0", "limit must be 1 to 1000"),
        ("/v1/journal/search?limit=1001", "limit must be 1 to 1000"),
        ("/v1/journal/search?after=x", "query string"),
        ("/v1/journal/search?direction=sideways", "sideways"),
        ("/v1/journal/export?limit=5", "filters only"),
        ("/v1/journal/messages/x", "Cannot parse"),
    ] {
        let status = api.refused(path, says);
        assert_eq!(status, 400, "{path}");
    }
    assert_eq!(
        api.refused("/v1/journal/messages/999999", "no journaled message"),
        404
    );

    // Every search and export is an audit record in the caller's name; those are not
    // messages, so fetching one by seq finds nothing.
    let (status, audit) = api.get("/v1/audit?limit=500");
    assert_eq!(status, 200, "{audit}");
    let records = audit["records"].as_array().unwrap();
    let by_desk = |action: &str| -> Vec<&str> {
        (records.iter())
            .filter(|r| r["action"] == action && r["actor"] == "compliance-desk")
            .map(|r| r["detail"].as_str().unwrap_or(""))
            .collect()
    };
    let searches = by_desk("journal-search");
    assert!(
        searches
            .iter()
            .any(|d| d.contains("alice@example.test") && d.ends_with(": 2 found")),
        "{searches:?}"
    );
    assert!(
        searches
            .iter()
            .any(|d| d.contains("since=yesterday: 400 Bad Request: invalid date")),
        "{searches:?}"
    );
    let exports = by_desk("journal-export");
    assert!(
        exports.iter().any(|d| d.contains("as mbox: 3 messages")),
        "{exports:?}"
    );
    assert!(
        (exports.iter()).any(|d| d.starts_with(&format!("message {}: ", all[0].0))),
        "{exports:?}"
    );
    let audit_seq = records[0]["seq"].as_u64().unwrap();
    assert_eq!(
        api.refused(
            &format!("/v1/journal/messages/{audit_seq}"),
            "no journaled message"
        ),
        404
    );
}

#[test]
fn operator_places_and_releases_a_legal_hold() {
    let admin = AdminSetup::new(&[
        ("records-officer", Role::Operator),
        ("compliance-desk", Role::Viewer),
    ]);
    let site = Site::start_with("admin-holds", LeveeMode::InProcess, &admin.section(""));
    wait_for_port(admin.port);
    let ca = site.cert_path();
    let officer = Api {
        port: admin.port,
        ca: &ca,
        token: Some(&admin.tokens[0]),
    };
    let desk = Api {
        token: Some(&admin.tokens[1]),
        ..officer
    };
    site.send_through_levee(&["h-1@bank.example", "h-2@bank.example"], ALICE, "alice");
    site.send_through_levee(&["h-3@bank.example"], BOB, "bob");
    let by_alice = json!({ "reason": "Matter 2026-114", "rcpt": ALICE });

    // A viewer lists holds but places none.
    let (status, body) = desk.post("/v1/journal/holds", &by_alice);
    assert_eq!(status, 403, "{body}");
    assert!(desk.holds().is_empty());

    let (status, placed) = officer.post("/v1/journal/holds", &by_alice);
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["records"], 2, "{placed}");
    let id = placed["hold"].as_u64().unwrap();
    let listed = desk.holds();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["reason"], "Matter 2026-114");
    assert_eq!(listed[0]["actor"], "records-officer");
    assert_eq!(listed[0]["count"], 2);
    assert_eq!(listed[0]["released"], false);

    // Bad requests place nothing.
    for (request, says) in [
        (
            json!({ "reason": " ", "rcpt": ALICE }),
            "reason must be 1 to 500 bytes",
        ),
        (json!({ "rcpt": ALICE }), "missing field `reason`"),
        (
            json!({ "reason": "x", "rcpt": "nobody@example.test" }),
            "matches no record",
        ),
        (
            json!({ "reason": "x", "since": "yesterday" }),
            "invalid date",
        ),
        (
            json!({ "reason": "x", "colour": "red" }),
            "unknown field `colour`",
        ),
        (
            json!({ "reason": "x", "direction": "sideways" }),
            "sideways",
        ),
    ] {
        let (status, body) = officer.post("/v1/journal/holds", &request);
        assert_eq!(status, 400, "{request}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{request}: {body}");
    }
    assert_eq!(officer.holds().len(), 1);

    // Released once; then the hold is known but no longer active.
    let release = format!("/v1/journal/holds/{id}/release");
    let closed = json!({ "reason": "matter closed" });
    assert_eq!(desk.post(&release, &closed).0, 403);
    assert_eq!(officer.post(&release, &json!({ "reason": "" })).0, 400);
    let (status, body) = officer.post(&release, &closed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "hold": id, "released": true }));
    assert_eq!(desk.holds()[0]["released"], true);
    let (status, body) = officer.post(&release, &closed);
    assert_eq!(status, 409, "{body}");
    let unknown = format!("/v1/journal/holds/{}/release", id + 1000);
    let (status, body) = officer.post(&unknown, &closed);
    assert_eq!(status, 404, "{body}");

    // The hold and the release are the audit records, once each, in the officer's name;
    // the viewer's attempt is one too.
    let (status, audit) = desk.get("/v1/audit?limit=500");
    assert_eq!(status, 200, "{audit}");
    let records = audit["records"].as_array().unwrap();
    let of = |action: &str| -> Vec<&Value> {
        (records.iter()).filter(|r| r["action"] == action).collect()
    };
    let holds = of("journal-hold");
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["seq"], id);
    assert_eq!(holds[0]["actor"], "records-officer");
    assert!(
        holds[0]["detail"]
            .as_str()
            .unwrap()
            .contains("Matter 2026-114"),
        "{holds:?}"
    );
    let releases = of("journal-release");
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["actor"], "records-officer");
    assert!(
        of("admin-refused")
            .iter()
            .any(|r| r["actor"] == "compliance-desk"
                && r["detail"].as_str().unwrap().starts_with("journal hold: ")),
        "{records:?}"
    );
}
