//! levee under test: in-process on its own runtime, or as a child process that a test can
//! `kill -9` and start again on the same ports and journal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use levee_config::{Config, ConfigFile, ReplicaConfig};
use levee_proxy::mailstack::{MailStack, free_port};
use tokio_util::sync::CancellationToken;

mod observe;
mod takeover;

/// How levee runs in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeveeMode {
    InProcess,
    /// The `levee` binary as a child, logging into `levee.log` at trace level (or at the
    /// `RUST_LOG` filter in `LEVEE_LOG`, which benchmarks set to levee's default, `info`).
    Child,
}

/// Ports levee listens on (chosen before start so that a restart reuses them).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Relay/MX listener, STARTTLS offered.
    pub relay: SocketAddr,
    /// Submission listener, STARTTLS offered.
    pub submission: SocketAddr,
    /// Submission with implicit TLS.
    pub submissions: SocketAddr,
    /// IMAP, STARTTLS offered.
    pub imap: SocketAddr,
    /// IMAP with implicit TLS.
    pub imaps: SocketAddr,
    pub metrics: SocketAddr,
}

impl Ports {
    /// Free loopback ports for every listener.
    fn fresh() -> Ports {
        let port = || local(free_port().expect("free port"));
        Ports {
            relay: port(),
            submission: port(),
            submissions: port(),
            imap: port(),
            imaps: port(),
            metrics: port(),
        }
    }
}

#[derive(Debug)]
enum Running {
    InProcess {
        runtime: tokio::runtime::Runtime,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), levee_proxy::RunError>>,
    },
    Child(Child),
    Stopped,
}

/// Which levee daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `levee run`: the proxy at the primary site.
    Run,
    /// `levee replica`: the replica site's daemon.
    Replica,
}

/// How a primary reaches a replica daemon started by [`Levee::start_replica`].
#[derive(Debug, Clone)]
pub struct ReplicaLink {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub token_file: PathBuf,
}

impl ReplicaLink {
    /// The `[replication]` section of a primary that streams to this replica.
    pub fn primary_section(&self, mode: &str, sync_timeout: &str) -> String {
        format!(
            "\n[replication]\nreplica = \"{}\"\nserver_name = \"replica.levee.test\"\nca = \"{}\"\ntoken_file = \"{}\"\nmode = \"{mode}\"\nsync_timeout = \"{sync_timeout}\"\nheartbeat = \"200ms\"\n",
            self.addr,
            self.ca.display(),
            self.token_file.display()
        )
    }
}

/// A levee instance bound to one mail stack.
#[derive(Debug)]
pub struct Levee {
    /// For a replica daemon, `relay` is the stream listener and the others are unused
    /// (but `metrics`).
    pub ports: Ports,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    mode: LeveeMode,
    daemon: Daemon,
    running: Running,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Levee {
    pub fn start(mode: LeveeMode, dir: &Path, stack: &MailStack, extra: &str) -> Levee {
        let ports = Ports::fresh();
        let (cert, key) =
            levee_proxy::tls::write_self_signed(dir, &["localhost", "levee.test"]).expect("cert");
        let text = format!(
            r#"
[node]
id = "test"
data_dir = "{data}"

[upstream.primary]
smtp = "{smtp}"
submission = "{submission_up}"
imap = "{imap_up}"
master_user = "{master_user}"
master_password_file = "{master_password}"

[smtp]
hostname = "levee.test"
local_domains = ["{domain}"]
max_message_size = 1048576
command_timeout = "5s"
data_timeout = "3s"
upstream_timeout = "10s"
connect_timeout = "2s"
shutdown_grace = "2s"

[[smtp.listen]]
addr = "{relay}"
kind = "relay"
tls = "starttls"

[[smtp.listen]]
addr = "{submission}"
kind = "submission"
tls = "starttls"

[[smtp.listen]]
addr = "{submissions}"
kind = "submission"
tls = "implicit"

[imap]
login_timeout = "10s"
connect_timeout = "2s"

[[imap.listen]]
addr = "{imap}"
tls = "starttls"

[[imap.listen]]
addr = "{imaps}"
tls = "implicit"

[tls]
cert = "{cert}"
key = "{key}"

[delivery]
retry_initial = "300ms"
retry_max = "1s"
# The harness's Postfix retries queued mail within 5 s (MailStack's main.cf).
unconfirmed_wait = "15s"

[metrics]
listen = "{metrics}"
{extra}
"#,
            data = dir.join("data").display(),
            smtp = stack.smtp_addr(),
            submission_up = stack.submission_addr(),
            domain = stack.domain(),
            relay = ports.relay,
            submission = ports.submission,
            submissions = ports.submissions,
            imap_up = stack.imap_addr(),
            master_user = stack.master_user(),
            master_password = stack.master_password_file().display(),
            imap = ports.imap,
            imaps = ports.imaps,
            metrics = ports.metrics,
            cert = cert.display(),
            key = key.display(),
        );
        let config_path = dir.join("levee.toml");
        std::fs::write(&config_path, &text).expect("write levee.toml");
        let mut levee = Levee {
            ports,
            config_path,
            log_path: dir.join("levee.log"),
            mode,
            daemon: Daemon::Run,
            running: Running::Stopped,
        };
        levee.restart();
        levee
    }

    /// Starts `levee replica` applying to `stack` over LMTP (with the duplicate check over
    /// IMAP as the stack's master user), with a fresh certificate and token; the returned
    /// link configures a primary to stream to it.
    pub fn start_replica(mode: LeveeMode, dir: &Path, stack: &MailStack) -> (Levee, ReplicaLink) {
        let ports = Ports::fresh();
        let (cert, key) = levee_proxy::tls::write_self_signed(dir, &["replica.levee.test"])
            .expect("replica cert");
        let token_file = dir.join("replication.token");
        std::fs::write(&token_file, "test-replication-token-0123456789\n").expect("token");
        let text = format!(
            r#"
[node]
id = "replica-test"
data_dir = "{data}"

[replica]
listen = "{listen}"
cert = "{cert}"
key = "{key}"
token_file = "{token}"
idle_timeout = "3s"

[apply]
lmtp = "{lmtp}"
local_domains = ["{domain}"]
retry = "300ms"
imap = "{imap}"
master_user = "{master_user}"
master_password_file = "{master_password}"

[metrics]
listen = "{metrics}"
"#,
            data = dir.join("data").display(),
            listen = ports.relay,
            cert = cert.display(),
            key = key.display(),
            token = token_file.display(),
            lmtp = stack.lmtp_addr(),
            domain = stack.domain(),
            imap = stack.imap_addr(),
            master_user = stack.master_user(),
            master_password = stack.master_password_file().display(),
            metrics = ports.metrics,
        );
        let config_path = dir.join("replica.toml");
        std::fs::write(&config_path, &text).expect("write replica.toml");
        let link = ReplicaLink {
            addr: ports.relay,
            ca: cert,
            token_file,
        };
        let mut levee = Levee {
            ports,
            config_path,
            log_path: dir.join("replica.log"),
            mode,
            daemon: Daemon::Replica,
            running: Running::Stopped,
        };
        levee.restart();
        (levee, link)
    }

    /// Starts levee again (after [`Levee::kill`] or [`Levee::stop`]) on the same ports and
    /// journal, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(matches!(self.running, Running::Stopped), "levee is running");
        self.running = match self.mode {
            LeveeMode::InProcess => self.spawn_in_process(),
            LeveeMode::Child => self.spawn_child(),
        };
        wait_until_listening(self.ports.relay, &self.log_path);
        if matches!(self.daemon, Daemon::Run) {
            // /status and /metrics may come up a moment after the mail listeners.
            wait_until_listening(self.ports.metrics, &self.log_path);
        }
    }

    fn spawn_in_process(&self) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let shutdown = CancellationToken::new();
        let task = match self.daemon {
            Daemon::Run => {
                let config = Config::load(&self.config_path).expect("test config is valid");
                runtime.spawn(levee_proxy::run(config, shutdown.clone(), None))
            }
            Daemon::Replica => {
                let config =
                    ReplicaConfig::load(&self.config_path).expect("replica config is valid");
                runtime.spawn(levee_proxy::standby::run(config, shutdown.clone(), None))
            }
        };
        Running::InProcess {
            runtime,
            shutdown,
            task,
        }
    }

    fn spawn_child(&self) -> Running {
        self.spawn_child_with(&[])
    }

    fn spawn_child_with(&self, extra: &[&str]) -> Running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("levee log");
        let command = match self.daemon {
            Daemon::Run => "run",
            Daemon::Replica => "replica",
        };
        let child = Command::new(levee_binary())
            .args([command, "--config"])
            .arg(&self.config_path)
            .args(extra)
            .env("RUST_LOG", child_log_filter())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn levee");
        Running::Child(child)
    }

    /// Graceful stop (SIGTERM for a child); returns when levee has exited.
    pub fn stop(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::InProcess {
                runtime,
                shutdown,
                task,
            } => {
                shutdown.cancel();
                let result = runtime.block_on(task).expect("levee task panicked");
                result.expect("levee run failed");
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
            Running::Child(mut child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let _ = child.wait();
            }
            Running::Stopped => {}
        }
    }

    /// `kill -9` of the child process.
    pub fn kill(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Child(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            other => {
                self.running = other;
                panic!("kill needs LeveeMode::Child");
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The Prometheus exposition text.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(self.ports.metrics).expect("metrics endpoint");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: levee\r\n\r\n")
            .expect("metrics request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("metrics response");
        text
    }
}

impl Drop for Levee {
    fn drop(&mut self) {
        if let Running::Child(child) = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Running::InProcess { shutdown, .. } = &self.running {
            shutdown.cancel();
        }
    }
}

/// The `RUST_LOG` filter of levee children: `LEVEE_LOG` if set, else `trace`.
fn child_log_filter() -> String {
    if let Some((_, filter)) = CHILD.get() {
        return filter.clone();
    }
    std::env::var("LEVEE_LOG").unwrap_or_else(|_| "trace".to_owned())
}

/// The binary and log filter of levee children, when a program chose them.
static CHILD: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();

/// Makes every levee child this process starts run `binary` (which must act as `levee`
/// when its first argument is `run` or `replica`) logging at `filter`; for programs other
/// than the tests, which have no `levee-under-test` beside them. The first call wins.
pub fn use_child_binary(binary: PathBuf, filter: &str) {
    let _ = CHILD.set((binary, filter.to_owned()));
}

/// The binary of levee children: the one chosen with [`use_child_binary`], `LEVEE_BIN`, or
/// the `levee-under-test` binary Cargo built beside the test executable (integration tests
/// run from `target/<profile>/deps/`).
fn levee_binary() -> PathBuf {
    if let Some((binary, _)) = CHILD.get() {
        return binary.clone();
    }
    if let Some(path) = std::env::var_os("LEVEE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("levee-under-test");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn wait_until_listening(addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            panic!(
                "levee did not listen on {addr} within 20 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Levee {
    /// Stops levee, rewrites its config file with `edit`, and starts it again on the same
    /// ports and journal (for settings the generated config does not expose, such as
    /// `[imap] allow_plaintext_auth`).
    pub fn reconfigure(&mut self, edit: impl FnOnce(&str) -> String) {
        self.stop();
        let text = std::fs::read_to_string(&self.config_path).expect("read levee config");
        std::fs::write(&self.config_path, edit(&text)).expect("write levee config");
        self.restart();
    }
}
