//! `levee journal search` and `levee journal verify` on the journal of a real site: mail
//! sent through levee by real clients (one inbound, one submitted with a login) is found
//! by each filter; the journal verifies; a flipped byte and two swapped records are named
//! by verify, which exits 1; bad input and a journal still in use are clear errors; and
//! every search and verify is an audit record.

use std::path::Path;
use std::process::Output;

use levee_journal::RecordKind;
use levee_tests::clients::{Security, smtp_send};
use levee_tests::{Site, message_file, sample_message, send_sample};
use serde_json::Value;

fn journal_cli(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
        .arg("journal")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {output:?}"))
}

/// The Message-IDs a search finds.
fn found(config: &Path, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["search", "--json"];
    args.extend_from_slice(filters);
    let output = journal_cli(config, &args);
    assert!(output.status.success(), "{filters:?}: {output:?}");
    let answer = json_of(&output);
    (answer["results"].as_array().unwrap().iter())
        .map(|r| r["message_id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn search_finds_by_each_filter_and_verify_names_the_broken_record() {
    let mut site = Site::start("compliance");
    let inbound = send_sample(
        site.dir.path(),
        site.levee.ports.relay,
        "offer-7@hospital.example",
        "alice@example.test",
    );
    assert_eq!(inbound["code"], 250, "{inbound}");
    let password = site.password("alice");
    let reply = message_file(
        site.dir.path(),
        "reply.eml",
        &sample_message("accepted-7@example.test", "bob@example.test"),
    );
    let outbound = smtp_send(
        site.levee.ports.submission,
        Security::StartTls,
        Some(("alice", &password)),
        "alice@example.test",
        &["bob@example.test"],
        &reply,
    );
    assert_eq!(outbound["code"], 250, "{outbound}");
    let config = site.levee.config_path.clone();

    // While levee runs, the journal is its own: a clear refusal.
    let busy = journal_cli(&config, &["verify"]);
    assert_eq!(busy.status.code(), Some(2), "{busy:?}");
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("open in a running levee"),
        "{busy:?}"
    );
    site.levee.stop();

    // Each filter; indexed ones and checked ones; combined.
    let offer = "offer-7@hospital.example";
    let accepted = "accepted-7@example.test";
    assert_eq!(found(&config, &[]), [offer, accepted]);
    assert_eq!(found(&config, &["--from", "SENDER@example.org"]), [offer]);
    assert_eq!(found(&config, &["--rcpt", "bob@example.test"]), [accepted]);
    assert_eq!(
        found(&config, &["--message-id", &format!("<{offer}>")]),
        [offer]
    );
    assert_eq!(
        found(&config, &["--subject", "kidney OFFER accepted-7"]),
        [accepted]
    );
    assert_eq!(found(&config, &["--user", "alice"]), [accepted]);
    assert_eq!(found(&config, &["--direction", "inbound"]), [offer]);
    assert_eq!(found(&config, &["--direction", "outbound"]), [accepted]);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(
        found(&config, &["--since", &today, "--until", &today]),
        [offer, accepted]
    );
    assert!(found(&config, &["--until", "2000-01-01"]).is_empty());
    assert_eq!(
        found(
            &config,
            &["--from", "alice@example.test", "--rcpt", "bob@example.test"]
        ),
        [accepted]
    );
    // Pages: one at a time.
    let first = json_of(&journal_cli(&config, &["search", "--json", "--limit", "1"]));
    let after = first["next_after"].as_u64().expect("a second page");
    let second = json_of(&journal_cli(
        &config,
        &[
            "search",
            "--json",
            "--limit",
            "1",
            "--after",
            &after.to_string(),
        ],
    ));
    assert_eq!(second["results"][0]["message_id"], accepted, "{second}");
    assert!(second["next_after"].is_null(), "{second}");
    // The table names the messages too.
    let table = journal_cli(&config, &["search", "--rcpt", "alice@example.test"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("SEQ") && table.contains("sender@example.org"),
        "{table}"
    );

    // Bad input: clear messages, exit status 2.
    let bad = journal_cli(&config, &["search", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid date"),
        "{bad:?}"
    );
    let unknown = journal_cli(&config, &["search", "--colour", "red"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("--colour"),
        "{unknown:?}"
    );

    // Export: byte for byte what the clients sent, to .eml files and to an mbox.
    let sent = [
        (offer, sample_message(offer, "alice@example.test")),
        (accepted, sample_message(accepted, "bob@example.test")),
    ];
    let out = site.dir.path().join("export");
    let exported = journal_cli(
        &config,
        &["export", "--json", "--out", out.to_str().unwrap()],
    );
    assert!(exported.status.success(), "{exported:?}");
    assert_eq!(json_of(&exported)["exported"], 2, "{exported:?}");
    let manifest = manifest_of(&out.join("manifest.jsonl"));
    assert_eq!(manifest.len(), 2);
    for ((id, bytes), entry) in sent.iter().zip(&manifest) {
        let file = std::fs::read(out.join(entry["file"].as_str().unwrap())).unwrap();
        assert!(
            file == *bytes,
            "{id}: the export differs from what the client sent"
        );
        let sha = hex_sha256(bytes);
        assert_eq!(entry["sha256"], sha.as_str(), "{entry}");
        assert_eq!(entry["chain"].as_str().unwrap().len(), 64, "{entry}");
    }
    // Interrupted: one file lost and the manifest's last line cut short. Run again: the
    // intact one is kept, the other written again.
    std::fs::remove_file(out.join(manifest[1]["file"].as_str().unwrap())).unwrap();
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    std::fs::write(out.join("manifest.jsonl"), &text[..text.len() - 20]).unwrap();
    let again = json_of(&journal_cli(
        &config,
        &["export", "--json", "--out", out.to_str().unwrap()],
    ));
    assert_eq!(
        (again["exported"].as_u64(), again["already_there"].as_u64()),
        (Some(1), Some(1)),
        "{again}"
    );
    assert_eq!(manifest_of(&out.join("manifest.jsonl")), manifest);
    let mbox = site.dir.path().join("selected.mbox");
    let to_mbox = journal_cli(
        &config,
        &[
            "export",
            "--format",
            "mbox",
            "--rcpt",
            "bob@example.test",
            "--out",
            mbox.to_str().unwrap(),
        ],
    );
    assert!(to_mbox.status.success(), "{to_mbox:?}");
    let written = std::fs::read(&mbox).unwrap();
    let entries = manifest_of(&site.dir.path().join("selected.mbox.manifest.jsonl"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (offset, length) = (
        entries[0]["offset"].as_u64().unwrap() as usize,
        entries[0]["length"].as_u64().unwrap() as usize,
    );
    let body = levee_proxy::compliance::export::mbox_unquote(
        &written[offset..offset + length],
        entries[0]["bytes"].as_u64().unwrap() as usize,
    );
    assert!(
        body == sent[1].1,
        "the mbox copy differs from what the client sent"
    );
    assert!(
        written.starts_with(b"From alice@example.test "),
        "{}",
        String::from_utf8_lossy(&written[..60])
    );

    // Untouched, the journal verifies.
    let intact = journal_cli(&config, &["verify", "--json"]);
    assert!(intact.status.success(), "{intact:?}");
    let report = json_of(&intact);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["records_checked"].as_u64().unwrap() >= 2, "{report}");

    // Every search and verify so far is an audit record.
    let journal = site.open_journal();
    let actions: Vec<String> = (journal.read_from(1, usize::MAX).unwrap().into_iter())
        .filter_map(|r| match r.kind {
            RecordKind::Audit(a) => Some(a.action),
            _ => None,
        })
        .collect();
    assert!(actions.iter().any(|a| a == "journal-search"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "journal-verify"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "journal-export"), "{actions:?}");
    let head = journal.head();
    drop(journal);

    // One flipped byte in the second message's stored record: verify names it.
    let message_seq = found_seq(&config, accepted);
    tamper(&site, |records| flip_a_byte(records, message_seq));
    let broken = journal_cli(&config, &["verify", "--json"]);
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    let report = json_of(&broken);
    assert_eq!(report["first_broken"]["seq"], message_seq, "{report}");

    // Put back, then swap two records: the first of them is named.
    tamper(&site, |records| {
        flip_a_byte(records, message_seq);
        let (a, b) = (1u64.to_be_bytes(), 2u64.to_be_bytes());
        let first = records.get(a).unwrap().unwrap();
        let second = records.get(b).unwrap().unwrap();
        records.insert(a, second).unwrap();
        records.insert(b, first).unwrap();
    });
    let swapped = journal_cli(&config, &["verify"]);
    assert_eq!(swapped.status.code(), Some(1), "{swapped:?}");
    let said = String::from_utf8_lossy(&swapped.stdout);
    assert!(said.contains("BROKEN at record 1"), "{said}");
    assert!(head >= 4, "head {head}");
}

fn manifest_of(path: &Path) -> Vec<Value> {
    (std::fs::read_to_string(path).unwrap().lines())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The seq of the message with `id`.
fn found_seq(config: &Path, id: &str) -> u64 {
    let answer = json_of(&journal_cli(
        config,
        &["search", "--json", "--message-id", id],
    ));
    answer["results"][0]["seq"].as_u64().expect("found")
}

/// Flips one bit in the middle of the stored record `seq` (again: flips it back).
fn flip_a_byte(records: &sled::Tree, seq: u64) {
    let key = seq.to_be_bytes();
    let mut value = records.get(key).unwrap().unwrap().to_vec();
    let at = value.len() / 2;
    value[at] ^= 0x01;
    records.insert(key, value).unwrap();
}

/// Changes the journal's record tree directly, as an attacker with the files would.
fn tamper(site: &Site, change: impl FnOnce(&sled::Tree)) {
    let db = sled::open(site.journal_dir()).expect("open sled");
    let records = db.open_tree("records").expect("records tree");
    change(&records);
    db.flush().expect("flush");
}
