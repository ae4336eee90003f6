//! `levee journal export`: a selection of journaled messages, byte for byte as levee
//! received them, to a directory of `.eml` files or to one mbox file, with a manifest of
//! JSON lines (seq, time, envelope, Message-ID, the body's sha256, the record's chain
//! hash, where it was written). The manifest grows as each message is written, so an
//! export that was interrupted continues where it stopped: what the manifest lists and the
//! output holds intact is kept, the rest written again.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use levee_journal::{Journal, Record, RecordKind, Seq};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::progress::Progress;
use super::select::{Filter, Selection, walk};
use super::{Source, audit_now, prepare, usage_error};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: Source,
    #[command(flatten)]
    pub selection: Selection,
    /// `eml`: a directory with one `<seq>.eml` per message and `manifest.jsonl`; `mbox`:
    /// one mboxrd file, with `<file>.manifest.jsonl` beside it.
    #[arg(long, value_parser = ["eml", "mbox"], default_value = "eml")]
    pub format: String,
    /// Where to write (created if missing; an earlier export there is continued).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// Where an export goes, and what an earlier run left there.
struct Target {
    mbox: bool,
    out: PathBuf,
    manifest: PathBuf,
    done: BTreeSet<Seq>,
    /// mbox: the length of the file's intact part.
    end: u64,
    /// Open once the earlier run's part is settled: the mbox, and the manifest.
    writers: Option<(Option<BufWriter<File>>, BufWriter<File>)>,
}

impl Target {
    fn open(out: &Path, mbox: bool) -> Result<Target, String> {
        let manifest = if mbox {
            PathBuf::from(format!("{}.manifest.jsonl", out.display()))
        } else {
            fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
            out.join("manifest.jsonl")
        };
        let mut target = Target {
            mbox,
            out: out.to_path_buf(),
            manifest,
            done: BTreeSet::new(),
            end: 0,
            writers: None,
        };
        target.resume()?;
        let append = |path: &Path| {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map(BufWriter::new)
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let mbox = if mbox {
            Some(append(&target.out)?)
        } else {
            None
        };
        target.writers = Some((mbox, append(&target.manifest)?));
        Ok(target)
    }

    /// Writes out what is buffered: an export that stops after this resumes from here.
    fn flush(&mut self) -> Result<(), String> {
        if let Some((mbox, manifest)) = &mut self.writers {
            if let Some(mbox) = mbox {
                mbox.flush()
                    .map_err(|e| format!("{}: {e}", self.out.display()))?;
            }
            manifest
                .flush()
                .map_err(|e| format!("{}: {e}", self.manifest.display()))?;
        }
        Ok(())
    }

    /// Keeps the entries of an earlier run whose message is intact in the output, and
    /// rewrites the manifest with just those.
    fn resume(&mut self) -> Result<(), String> {
        let Ok(file) = File::open(&self.manifest) else {
            return Ok(());
        };
        let mut kept = Vec::new();
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                break; // A line cut short by the interruption: everything after is redone.
            };
            if !self.intact(&entry) {
                break;
            }
            self.done.insert(entry["seq"].as_u64().unwrap_or(0));
            kept.push(line);
        }
        if self.mbox {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.out)
                .map_err(|e| format!("{}: {e}", self.out.display()))?;
            file.set_len(self.end)
                .map_err(|e| format!("{}: {e}", self.out.display()))?;
        }
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        fs::write(&self.manifest, text).map_err(|e| format!("{}: {e}", self.manifest.display()))
    }

    fn intact(&mut self, entry: &Value) -> bool {
        let want = entry["sha256"].as_str().unwrap_or("");
        if self.mbox {
            let (Some(offset), Some(length)) = (entry["offset"].as_u64(), entry["length"].as_u64())
            else {
                return false;
            };
            let Ok(mut file) = File::open(&self.out) else {
                return false;
            };
            let mut written = vec![0; length as usize];
            let read = file.seek(SeekFrom::Start(offset)).is_ok()
                && std::io::Read::read_exact(&mut file, &mut written).is_ok();
            let bytes = entry["bytes"].as_u64().unwrap_or(0) as usize;
            let ok = offset == self.end
                && read
                && hex::encode(Sha256::digest(mbox_unquote(&written, bytes))) == want;
            if ok {
                self.end = offset + length;
            }
            ok
        } else {
            let file = self.out.join(entry["file"].as_str().unwrap_or(""));
            fs::read(file).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == want)
        }
    }

    /// Writes one message and its manifest line; the number of bytes written.
    fn write(&mut self, record: &Record) -> Result<u64, String> {
        let RecordKind::Message(message) = &record.kind else {
            return Ok(0);
        };
        let body = &message.body;
        let mut entry = json!({
            "seq": record.seq,
            "time_ms": record.time_ms,
            "from": message.mail_from,
            "to": message.rcpt_to,
            "message_id": message.message_id,
            "bytes": body.len(),
            "sha256": hex::encode(record.body_sha256),
            "chain": hex::encode(record.chain),
        });
        let io = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
        let Some((mbox, manifest)) = &mut self.writers else {
            return Err("the export is not open".into());
        };
        let written = if let Some(mbox) = mbox {
            let quoted = mbox_entry(record.time_ms, &message.mail_from, body);
            mbox.write_all(&quoted).map_err(|e| io(&self.out, e))?;
            let from_line = quoted
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            entry["offset"] = json!(self.end + from_line as u64);
            entry["length"] = json!((quoted.len() - from_line) as u64);
            self.end += quoted.len() as u64;
            quoted.len() as u64
        } else {
            let name = format!("{:012}.eml", record.seq);
            let path = self.out.join(&name);
            fs::write(&path, body).map_err(|e| io(&path, e))?;
            entry["file"] = json!(name);
            body.len() as u64
        };
        writeln!(manifest, "{entry}").map_err(|e| io(&self.manifest, e))?;
        Ok(written)
    }
}

/// One mboxrd message: the `From ` line, the body with `>*From ` lines quoted once more,
/// a newline if it had none at its end, and a blank line.
pub fn mbox_entry(time_ms: u64, sender: &str, body: &[u8]) -> Vec<u8> {
    let when = time::OffsetDateTime::from_unix_timestamp((time_ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    let sender = if sender.is_empty() || sender.contains(char::is_whitespace) {
        "MAILER-DAEMON"
    } else {
        sender
    };
    let mut out = format!(
        "From {sender} {}\n",
        when.format(&format).unwrap_or_default()
    )
    .into_bytes();
    for line in body.split_inclusive(|&b| b == b'\n') {
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if line[quotes..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    if !body.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The original bytes of an mboxrd message body (`bytes` long) as written by
/// [`mbox_entry`], without its `From ` line.
pub fn mbox_unquote(written: &[u8], bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(written.len());
    for line in written.split_inclusive(|&b| b == b'\n') {
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out.truncate(bytes);
    out
}

pub fn run(args: &ExportArgs) -> ExitCode {
    let json = args.source.json;
    let (filter, journal) = match prepare("export", &args.source, &args.selection) {
        Ok(prepared) => prepared,
        Err(exit) => return exit,
    };
    let mut target = match Target::open(&args.out, args.format == "mbox") {
        Ok(target) => target,
        Err(err) => return usage_error("export", &err, json),
    };
    let started = Instant::now();
    let outcome = export(&journal, &filter, &mut target);
    let seconds = started.elapsed().as_secs_f64();
    let (exported, kept, bytes) = match outcome {
        Ok(counts) => counts,
        Err(err) => {
            return usage_error("export", &format!("{err} (run it again to continue)"), json);
        }
    };
    let mb_per_s = bytes as f64 / 1e6 / seconds.max(1e-9);
    let detail = format!(
        "{filter:?} as {} to {}: {exported} written, {kept} already there",
        args.format,
        args.out.display()
    );
    audit_now(&journal, "journal-export", detail);
    if json {
        println!(
            "{}",
            json!({
                "ok": true, "exported": exported, "already_there": kept, "bytes": bytes,
                "seconds": seconds, "manifest": target.manifest,
            })
        );
    } else {
        println!(
            "{exported} message(s) written, {kept} already there, {bytes} bytes in {seconds:.2} s ({mb_per_s:.0} MB/s)"
        );
        println!("manifest: {}", target.manifest.display());
    }
    ExitCode::SUCCESS
}

/// Writes every selected message the target does not hold yet: (written, already there,
/// bytes written).
fn export(
    journal: &Journal,
    filter: &Filter,
    target: &mut Target,
) -> Result<(u64, u64, u64), String> {
    let mut progress = Progress::new("export", journal.head());
    let (mut written, mut kept, mut bytes) = (0, 0, 0);
    let result = walk(journal, filter, 0, |record| {
        progress.at(record.seq);
        if target.done.contains(&record.seq) {
            kept += 1;
        } else {
            bytes += target.write(&record)?;
            written += 1;
        }
        Ok(false)
    });
    progress.finish();
    // Also after an error: what was written stays usable for the next run.
    let flushed = target.flush();
    result.and(flushed).map(|()| (written, kept, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_quoting_round_trips_any_body() {
        for body in [
            &b"Subject: x\r\n\r\nFrom here on\r\n>From there\r\n>>From afar\r\nend\r\n"[..],
            b"no newline at the end",
            b"From the first line\n",
            b"",
        ] {
            let entry = mbox_entry(0, "a@b", body);
            assert!(entry.starts_with(b"From a@b Thu Jan  1 00:00:00 1970\n"));
            let from_line = entry.iter().position(|&b| b == b'\n').unwrap() + 1;
            let text = String::from_utf8_lossy(&entry[from_line..]).to_string();
            assert!(!text.lines().any(|l| l.starts_with("From ")), "{text}");
            assert_eq!(mbox_unquote(&entry[from_line..], body.len()), body);
        }
    }
}
