//! What the benchmark binaries share: loopback addresses, waiting for a listener, machine
//! facts, medians and number formats, an empty Maildir between rounds, and rewriting their
//! own section of BENCHMARKS.md.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use levee_proxy::mailstack::MailStack;

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits up to 20 s until `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        ensure!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A command's trimmed standard output; empty when it cannot run.
pub fn shell(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `device fstype mountpoint` of the filesystem holding `dir`.
pub fn fs_of(dir: &Path) -> String {
    let out = shell(
        "df",
        &["--output=source,fstype,target", &dir.display().to_string()],
    );
    let line = out.lines().nth(1).unwrap_or("?");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The median (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Rounded, thousands separated: `12,345`.
pub fn thousands(r: f64) -> String {
    let r = r.round() as i64;
    if r.abs() >= 1000 {
        format!("{},{:03}", thousands((r / 1000) as f64), (r % 1000).abs())
    } else {
        r.to_string()
    }
}

/// Removes alice's Maildir (Dovecot recreates it, indexes included, on the next delivery):
/// LMTP delivery slows as `new/` grows, which would penalise later rounds.
pub fn empty_maildir(stack: &MailStack) -> Result<()> {
    match std::fs::remove_dir_all(stack.maildir("alice")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context("emptying the Maildir")
        }
        _ => Ok(()),
    }
}

/// The markers around a benchmark's generated section.
pub fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench-{name}:begin"),
        format!("<!-- bench-{name}:end -->"),
    )
}

/// Replaces the `name` section of `path`; a new one goes after the `after` section when
/// there is one, else at the end. Everything else is kept.
pub fn write_section(path: &Path, name: &str, after: Option<&str>, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# levee benchmarks\n".into());
    let (begin, end) = markers(name);
    let splice = |head: &str, rest: &str, lead: &str| {
        let rest = rest.trim_start_matches('\n');
        let gap = if rest.is_empty() { "" } else { "\n" };
        format!("{head}{lead}{section}{gap}{rest}")
    };
    let anchor = after.map(|a| markers(a).1);
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => splice(&old[..b], &old[e + end.len()..], ""),
        _ => match anchor
            .as_deref()
            .and_then(|a| old.find(a).map(|i| i + a.len()))
        {
            Some(at) => splice(&old[..at], &old[at..], "\n\n"),
            None => format!("{}\n\n{section}", old.trim_end_matches('\n')),
        },
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// The first three fields of /proc/loadavg: other work on the machine skews every figure.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The commit measured, and whether the working tree differed from it.
pub fn source() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = shell("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = !shell("git", &["-C", dir, "status", "--porcelain"]).is_empty();
    match (commit.is_empty(), dirty) {
        (true, _) => "not a git checkout".into(),
        (false, true) => format!("commit {commit} with uncommitted changes"),
        (false, false) => format!("commit {commit}"),
    }
}

/// CPUs, their model and the kernel, for a benchmark's header.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .trim_start_matches([' ', '\t', ':']),
            )
        })
        .unwrap_or("?")
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{nproc} CPUs ({model}), Linux {}", shell("uname", &["-r"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped_by_threes() {
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(7_864.4), "7,864");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(-1_234_567.0), "-1,234,567");
    }

    #[test]
    fn section_goes_after_its_anchor_then_is_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        let smtp = "<!-- bench-smtp:begin -->\nsmtp\n<!-- bench-smtp:end -->\n";
        std::fs::write(&path, format!("# t\n\n{smtp}\n## later\n")).unwrap();
        let (begin, end) = markers("replication");
        let section = |x: &str| format!("{begin} -->\n{x}\n{end}\n");
        write_section(&path, "replication", Some("smtp"), &section("one")).unwrap();
        let once = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            once,
            format!("# t\n\n{smtp}\n{}\n## later\n", section("one"))
        );
        write_section(&path, "replication", Some("smtp"), &section("two")).unwrap();
        let twice = std::fs::read_to_string(&path).unwrap();
        assert_eq!(twice, once.replace("one", "two"));
        // Replacing the anchor's own section keeps the other one.
        write_section(
            &path,
            "smtp",
            None,
            "<!-- bench-smtp:begin -->\nnew\n<!-- bench-smtp:end -->\n",
        )
        .unwrap();
        let third = std::fs::read_to_string(&path).unwrap();
        assert!(
            third.contains("\nnew\n") && third.contains("two"),
            "{third}"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(12345.4), "12,345");
        assert_eq!(thousands(-1500.0), "-1,500");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
