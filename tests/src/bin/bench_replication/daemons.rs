//! The bench's levee daemons as child processes: `levee run` relaying to smtp-sink and
//! streaming its journal to `levee replica`, which applies to the replica site's Dovecot.
//! Every daemon gets a fresh data directory under /var/tmp (a real disk: fdatasync cost
//! depends on it), removed when the daemon is dropped.

use super::*;

pub(crate) const AS_LEVEE: &str = "BENCH_REPLICATION_AS_LEVEE";
pub(crate) const DATA_PARENT: &str = "/var/tmp";
/// The replica logs each journal group commit, stamped right after its fdatasync: the
/// exact moment records become durable there, without polling.
const COMMIT_LOG_FILTER: &str = "info,levee_journal::commit=debug";

/// A child process killed (and reaped) on drop, also when the bench fails half-way.
#[derive(Debug)]
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One levee daemon: `levee run` (`listen` = its relay listener) or `levee replica`
/// (`listen` = its stream listener).
#[derive(Debug)]
pub(crate) struct Daemon {
    command: &'static str,
    /// `RUST_LOG` for the child (it overrides `[log] level`).
    log_filter: Option<&'static str>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) listen: SocketAddr,
    pub(crate) metrics: SocketAddr,
    child: Option<Guard>,
}

fn fresh_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(DATA_PARENT)
        .with_context(|| format!("temp dir in {DATA_PARENT}"))
}

/// `levee replica` applying to `stack`'s Dovecot over LMTP, token auth, started.
pub(crate) fn replica(stack: &MailStack) -> Result<Daemon> {
    let dir = fresh_dir("levee-bench-replica-")?;
    let (listen, metrics) = (local(free_port()?), local(free_port()?));
    let (cert, key) = levee_proxy::tls::write_self_signed(dir.path(), &["replica.levee.bench"])?;
    let token = dir.path().join("replication.token");
    std::fs::write(&token, "bench-replication-token-0123456789\n")?;
    let config = format!(
        "[node]\nid = \"bench-replica\"\ndata_dir = \"{data}\"\n\n\
         [replica]\nlisten = \"{listen}\"\ncert = \"{cert}\"\nkey = \"{key}\"\ntoken_file = \"{token}\"\n\n\
         [apply]\nlmtp = \"{lmtp}\"\nlocal_domains = [\"{domain}\"]\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
         [log]\njson = true\n",
        data = dir.path().join("data").display(),
        cert = cert.display(),
        key = key.display(),
        token = token.display(),
        lmtp = stack.lmtp_addr(),
        domain = stack.domain(),
    );
    std::fs::write(dir.path().join("levee.toml"), config)?;
    let mut daemon = Daemon {
        command: "replica",
        log_filter: Some(COMMIT_LOG_FILTER),
        dir,
        listen,
        metrics,
        child: None,
    };
    daemon.start()?;
    Ok(daemon)
}

/// `levee run` relaying to `sink`, streaming to `replica` in `mode` ("sync" or "async",
/// other replication settings at their defaults), started and connected to the replica.
pub(crate) fn primary(sink: SocketAddr, replica: &Daemon, mode: &str) -> Result<Daemon> {
    let dir = fresh_dir("levee-bench-primary-")?;
    let (relay, metrics) = (local(free_port()?), local(free_port()?));
    let config = format!(
        "[node]\nid = \"bench-primary\"\ndata_dir = \"{data}\"\n\n[upstream.primary]\nsmtp = \"{sink}\"\n\n\
         [smtp]\nhostname = \"levee.bench\"\nlocal_domains = [\"example.test\"]\nmax_connections = 10000\nmax_connections_per_ip = 0\n\n\
         [[smtp.listen]]\naddr = \"{relay}\"\nkind = \"relay\"\ntls = \"none\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
         [replication]\nreplica = \"{stream}\"\nserver_name = \"replica.levee.bench\"\nca = \"{ca}\"\n\
         token_file = \"{token}\"\nmode = \"{mode}\"\n",
        data = dir.path().join("data").display(),
        stream = replica.listen,
        ca = replica.dir.path().join("cert.pem").display(),
        token = replica.dir.path().join("replication.token").display(),
    );
    std::fs::write(dir.path().join("levee.toml"), config)?;
    let mut daemon = Daemon {
        command: "run",
        log_filter: None,
        dir,
        listen: relay,
        metrics,
        child: None,
    };
    daemon.start()?;
    daemon.wait_connected(true)?;
    Ok(daemon)
}

impl Daemon {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("levee.log")
    }

    pub(crate) fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("data/journal")
    }

    /// Starts the child (this binary re-executed as `levee`) and waits for its listeners.
    pub(crate) fn start(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "levee {} already running",
            self.command
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(std::env::current_exe()?);
        if let Some(filter) = self.log_filter {
            command.env("RUST_LOG", filter);
        }
        let child = command
            .env(AS_LEVEE, "1")
            .args([self.command, "--config"])
            .arg(self.dir.path().join("levee.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning levee {}", self.command))?;
        self.child = Some(Guard(child));
        let what = format!("levee {}", self.command);
        wait_listening(self.listen, &what).map_err(|e| e.context(self.log_tail()))?;
        wait_listening(self.metrics, &what)
    }

    /// SIGTERM, then waits (at most 30 s) for a clean exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut guard) = self.child.take() else {
            return Ok(());
        };
        let pid = guard.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = guard.0.try_wait()? {
                break exit;
            }
            ensure!(Instant::now() < deadline, "levee ignored SIGTERM for 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            exit.success(),
            "levee {} exited with {exit}:\n{}",
            self.command,
            self.log_tail()
        );
        Ok(())
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        levee_tests::tail(&log, 20)
    }

    pub(crate) fn http(&self) -> HttpClient {
        HttpClient::new(self.metrics)
    }

    pub(crate) fn status(&self) -> Result<Value> {
        self.http()
            .status()
            .with_context(|| format!("levee {} /status", self.command))
    }

    pub(crate) fn metric(&self, name: &str) -> Result<f64> {
        let value = self.http().metric(name)?;
        value.with_context(|| format!("no {name} in levee {}'s /metrics", self.command))
    }

    /// Waits until `/status` says the replication link is (or is not) up.
    pub(crate) fn wait_connected(&self, connected: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status()?;
            if status["replication"]["connected"] == connected {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "replication.connected != {connected} after 20 s: {status}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The primary's journal head.
pub(crate) fn head(primary: &Daemon) -> Result<u64> {
    u64_at(&primary.status()?, "/journal_head")
}

pub(crate) fn u64_at(value: &Value, pointer: &str) -> Result<u64> {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("{pointer} is not a number in {value}"))
}

/// Waits until the replica holds and has applied the primary's whole journal; returns
/// the head.
pub(crate) fn wait_caught_up(primary: &Daemon, replica: &Daemon, secs: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let head = head(primary)?;
        let r = replica.status()?;
        let (durable, applied) = (u64_at(&r, "/durable_seq")?, u64_at(&r, "/applied_seq")?);
        if durable == head && applied == head {
            return Ok(head);
        }
        ensure!(
            Instant::now() < deadline,
            "replica not caught up after {secs} s: head {head}, durable {durable}, applied \
             {applied}\nprimary log:\n{}\nreplica log:\n{}",
            primary.log_tail(),
            replica.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A group commit of the replica's journal, from its log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Commit {
    /// Log timestamp (wall clock, microseconds) and the durable head it reported.
    pub(crate) at: Duration,
    pub(crate) head: u64,
}

impl Daemon {
    /// Every "journal group commit" line of a daemon that logs JSON at debug for
    /// `levee_journal::commit`, in log order.
    pub(crate) fn commits(&self) -> Result<Vec<Commit>> {
        let log = std::fs::read_to_string(self.log_path())?;
        let mut out = Vec::new();
        for line in log.lines().filter(|l| l.contains("journal group commit")) {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("log line {line}"))?;
            let at = v["timestamp"].as_str().and_then(parse_rfc3339);
            let head = v["fields"]["head"].as_u64();
            let (Some(at), Some(head)) = (at, head) else {
                bail!("unexpected commit log line: {line}");
            };
            out.push(Commit { at, head });
        }
        Ok(out)
    }
}

/// `2026-11-22T07:59:00.123456Z` (tracing-subscriber's timestamps) as time since the epoch.
fn parse_rfc3339(s: &str) -> Option<Duration> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + sec;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_timestamps() {
        // date -u -d 2026-11-22T07:59:00Z +%s
        let at = parse_rfc3339("2026-11-22T07:59:00.123456Z");
        assert_eq!(at, Some(Duration::new(1_795_334_340, 123_456_000)));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.5Z"),
            Some(Duration::new(1_709_164_800, 500_000_000))
        );
        assert_eq!(parse_rfc3339("not a time"), None);
    }
}
