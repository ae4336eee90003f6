//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed on every test run, on the stable
//! toolchain: each kept input, and a fixed set of mutations of it (bit flips, cuts,
//! repeats, splices with another input), goes through the same entry point its fuzz
//! target drives. A crash libFuzzer finds is kept in the corpus with its fix, so this test
//! holds the fix. The long runs are `fuzz/run` (nightly, libFuzzer).

use std::path::{Path, PathBuf};

use levee_proxy::fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("smtp_input", fuzzing::smtp_input),
    ("imap_client", fuzzing::imap_client),
    ("imap_server", fuzzing::imap_server),
    ("replication_frame", fuzzing::replication_frame),
    ("journal_record", fuzzing::journal_record),
    ("config", fuzzing::config),
];

/// Mutations tried per kept input.
const MUTATIONS: usize = 512;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a readable corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

/// xorshift64*: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = rng.below(out.len() + 1);
    match rng.below(6) {
        0 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        1 => out.truncate(at),
        2 => {
            let end = (at + rng.below(64)).min(out.len());
            let piece = out[at..end].to_vec();
            out.splice(at..at, piece.iter().copied().cycle().take(piece.len() * 8));
        }
        3 => {
            let from = rng.below(other.len() + 1);
            out.truncate(at);
            out.extend_from_slice(&other[from..]);
        }
        4 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = [0, 0xff, b'{', b'}', b'\r', b'\n', b'"', b' '][rng.below(8)];
        }
        _ => {
            let end = (at + rng.below(16)).min(out.len());
            out.drain(at..end);
        }
    }
    out
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in TARGETS {
        assert!(
            !corpus(target).is_empty(),
            "fuzz/corpus/{target} holds no input"
        );
    }
}

#[test]
fn corpus_inputs_and_their_mutations_are_handled() {
    let mut runs = 0;
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        let mut rng = Rng(0x6c65_7665_6500_0001 ^ target.len() as u64);
        for (n, (path, input)) in inputs.iter().enumerate() {
            run(input);
            let other = &inputs[(n + 1) % inputs.len()].1;
            for round in 0..MUTATIONS {
                let mutated = mutate(&mut rng, input, other);
                let outcome = std::panic::catch_unwind(|| run(&mutated));
                assert!(
                    outcome.is_ok(),
                    "{target}: mutation {round} of {} panicked; input (hex): {}",
                    path.display(),
                    mutated
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                runs += 1;
            }
        }
    }
    assert!(runs >= TARGETS.len() * MUTATIONS);
}

/// The hand-written seeds are what they claim to be, so the fuzzer starts from inputs
/// levee accepts rather than from noise.
#[test]
fn the_seeds_are_valid_inputs() {
    use levee_config::ConfigFile;
    for (path, text) in corpus("config") {
        let text = String::from_utf8(text).expect("a UTF-8 configuration");
        let outcome = if path.ends_with("replica.toml") {
            levee_config::ReplicaConfig::from_toml(&text).map(drop)
        } else {
            levee_config::Config::from_toml(&text).map(drop)
        };
        // The files a seed names (certificates, keys, tokens) do not exist here; anything
        // else refused means the seed is not a configuration levee would run with.
        if let Err(e) = outcome {
            let problems = e.to_string();
            assert!(
                problems
                    .lines()
                    .all(|l| l.contains("is not a readable file")),
                "{} is refused: {problems}",
                path.display()
            );
        }
    }
    // The seeds fuzz-seeds wrote (regression inputs beside them need not decode).
    let frames: Vec<_> = corpus("replication_frame")
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("frame-"))
        })
        .collect();
    assert!(frames.len() >= 8, "one seed per frame type");
    for (path, bytes) in frames {
        assert!(
            levee_replica::frame::decode(&bytes).is_ok(),
            "{} does not decode",
            path.display()
        );
    }
}
