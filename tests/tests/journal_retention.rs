//! An encrypted journal on a real site, and legal hold and pruning from the command line:
//! mail sent through levee by a real client cannot be read in the raw journal files;
//! export with the key gives back exactly what the client sent; no key or a wrong key is
//! a clear error; a held message survives `levee journal prune`, the unheld ones go, and
//! `verify` still passes, also after the hold is released and the rest pruned.

use std::path::Path;
use std::process::Output;

use levee_tests::clients::{Security, smtp_send};
use levee_tests::{LeveeMode, Site, contains, message_file};
use serde_json::Value;

const MARKER: &str = "MARKER-c41d-heart-offer-ward-7";

fn journal_cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_levee-under-test"))
        .arg("journal")
        .args(args)
        .output()
        .unwrap()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {output:?}"))
}

fn message(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: <coordinator@hospital.example>\r\nTo: <{to}>\r\nSubject: offer {id}\r\nMessage-ID: <{id}>\r\n\r\n{MARKER} for {id}\r\n"
    )
    .into_bytes()
}

/// Whether any file under `dir` contains `needle`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            contains(&std::fs::read(&path).unwrap(), needle)
        }
    })
}

fn found(config: &str) -> Vec<String> {
    let output = journal_cli(&["search", "--json", "--config", config]);
    assert!(output.status.success(), "{output:?}");
    (json_of(&output)["results"].as_array().unwrap().iter())
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn encrypted_journal_hold_and_prune_keep_the_chain_verifiable() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("journal.key");
    std::fs::write(&key_file, [0x5au8; 32]).unwrap();
    let wrong_key = keys.path().join("wrong.key");
    std::fs::write(&wrong_key, hex_of(&[0xa5u8; 32])).unwrap();
    let extra = format!("\n[journal]\nkey_file = \"{}\"\n", key_file.display());
    let mut site = Site::start_with("retention", LeveeMode::InProcess, &extra);

    let sent = [
        ("offer-1@hospital.example", "alice@example.test"),
        ("offer-2@hospital.example", "bob@example.test"),
        ("offer-3@hospital.example", "alice@example.test"),
    ];
    for (id, to) in sent {
        let file = message_file(site.dir.path(), &format!("{id}.eml"), &message(id, to));
        let reply = smtp_send(
            site.levee.ports.relay,
            Security::Plain,
            None,
            "coordinator@hospital.example",
            &[to],
            &file,
        );
        assert_eq!(reply["code"], 250, "{reply}");
    }
    // Delivered (so due for pruning) before levee stops.
    let ids = |user: &str| -> Vec<String> {
        (sent.iter())
            .filter(|(_, to)| to.starts_with(user))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    site.wait_for_messages("alice", &ids("alice"), 30);
    site.wait_for_messages("bob", &ids("bob"), 30);
    site.levee.stop();

    // At rest: the marker is nowhere in the journal's files.
    let journal_dir = site.journal_dir();
    assert!(
        !files_contain(&journal_dir, MARKER.as_bytes()),
        "a message body is readable in the raw journal files"
    );
    let config = site.levee.config_path.to_str().unwrap().to_string();
    let dir = journal_dir.to_str().unwrap();

    // Without the key, or with another one: a clear error, exit 2, no output.
    let keyless = journal_cli(&["search", "--journal", dir]);
    assert_eq!(keyless.status.code(), Some(2), "{keyless:?}");
    assert!(
        String::from_utf8_lossy(&keyless.stderr).contains("encrypted"),
        "{keyless:?}"
    );
    let out = site.dir.path().join("export");
    let wrong = journal_cli(&[
        "export",
        "--journal",
        dir,
        "--key-file",
        wrong_key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong encryption key"),
        "{wrong:?}"
    );
    assert!(!out.exists(), "nothing exported with a wrong key");

    // With the key (from the config): export decrypts, byte for byte.
    let exported = journal_cli(&[
        "export",
        "--json",
        "--config",
        &config,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{exported:?}");
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let entries: Vec<Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 3);
    for ((id, to), entry) in sent.iter().zip(&entries) {
        let file = std::fs::read(out.join(entry["file"].as_str().unwrap())).unwrap();
        assert!(
            file == message(id, to),
            "{id}: export differs from what was sent"
        );
    }

    // A hold on bob's mail; then prune everything older than tomorrow.
    let held = journal_cli(&[
        "hold",
        "--json",
        "--config",
        &config,
        "--rcpt",
        "bob@example.test",
        "--reason",
        "litigation 2026-114",
    ]);
    assert!(held.status.success(), "{held:?}");
    let hold_id = json_of(&held)["hold"].as_u64().unwrap();
    assert_eq!(json_of(&held)["records"], 1);
    let no_reason = journal_cli(&["hold", "--config", &config, "--rcpt", "x@y"]);
    assert_eq!(no_reason.status.code(), Some(2), "{no_reason:?}");

    let tomorrow = (time::OffsetDateTime::now_utc().date().next_day().unwrap()).to_string();
    let pruned = journal_cli(&[
        "prune", "--json", "--config", &config, "--before", &tomorrow,
    ]);
    assert!(pruned.status.success(), "{pruned:?}");
    let report = &json_of(&pruned)["report"];
    assert_eq!(
        (report["pruned"].as_u64(), report["held"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(found(&config), ["offer-2@hospital.example"]);

    let verify = |expect_pruned: u64| {
        let output = journal_cli(&["verify", "--json", "--config", &config]);
        assert!(output.status.success(), "{output:?}");
        let answer = json_of(&output);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["records_pruned"], expect_pruned, "{answer}");
    };
    verify(2);

    let holds = json_of(&journal_cli(&["holds", "--json", "--config", &config]));
    assert_eq!(holds["holds"][0]["id"], hold_id, "{holds}");
    assert_eq!(holds["holds"][0]["reason"], "litigation 2026-114");
    assert_eq!(holds["holds"][0]["released"], false);

    // Released, the held one goes too; the chain still verifies across both prunes.
    let released = journal_cli(&[
        "release",
        "--config",
        &config,
        &hold_id.to_string(),
        "--reason",
        "matter closed",
    ]);
    assert!(released.status.success(), "{released:?}");
    let pruned = journal_cli(&["prune", "--json", "--config", &config, "--days", "0"]);
    assert_eq!(json_of(&pruned)["report"]["pruned"], 1, "{pruned:?}");
    assert!(found(&config).is_empty());
    verify(3);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
