//! The `levee` command line. Parses arguments, sets up logging, builds the runtime and
//! hands over to the library; exit codes follow sysexits (64 for a bad configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use levee_config::{Config, ConfigFile, ReplicaConfig};
use tokio_util::sync::CancellationToken;

/// Exit code for an unusable configuration (EX_USAGE, as linkerd and others use).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "levee",
    version,
    about = "Mail continuity proxy: journal every message, never lose one"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (SMTP listeners, journal, delivery worker, metrics).
    Run {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Start beside the levee this one replaces (a new binary): listen on its ports at
        /// once, and take over its journal when it stops (send it SIGTERM). Its clients
        /// are not refused meanwhile; they wait for this one.
        #[arg(long)]
        take_over: bool,
    },
    /// Run the replica site's daemon: receive the journal stream, apply it to the standby.
    Replica {
        /// The replica's configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file: prints OK or every problem with its line.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The file is `levee replica`'s.
        #[arg(long)]
        replica: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The state of mail continuity, from the admin API: active site, epoch, health of
    /// both sites, replication lag.
    Status {
        #[command(flatten)]
        remote: crate::admin::commands::Remote,
    },
    /// Move every client to the given site now (planned switchover).
    Switchover {
        /// `replica` or `primary`.
        #[arg(long, value_parser = ["replica", "primary"])]
        to: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: crate::admin::commands::Remote,
    },
    /// Move every client back to the primary site.
    Failback {
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: crate::admin::commands::Remote,
    },
    /// Compliance work on a journal directory: search, verify.
    Journal {
        #[command(subcommand)]
        command: crate::compliance::JournalCommand,
    },
    /// Admin API access: `levee admin token --name NAME --role operator` makes a token.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Show levee working on this machine: real Postfix and Dovecot on loopback, levee in
    /// front, a message through it, then the mail server's outage survived.
    Demo {
        /// Install Postfix and Dovecot with apt-get when they are missing.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        install: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Make a bearer token: prints the token (shown once, kept nowhere) and the line that
    /// admits it, for the tokens file.
    Token {
        /// Who holds it (one word), shown in the audit log.
        #[arg(long)]
        name: String,
        /// viewer (status, audit, metrics) or operator (also switchover and failback).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Print `{"token": ..., "line": ...}`.
        #[arg(long)]
        json: bool,
    },
}

fn admin(command: AdminCommand) -> ExitCode {
    let AdminCommand::Token { name, role, json } = command;
    let Some(role) = crate::admin::Role::parse(&role) else {
        eprintln!("levee admin token: unknown role {role:?} (expected viewer or operator)");
        return ExitCode::from(2);
    };
    match crate::admin::tokens::generate(&name, role) {
        Ok(new) if json => {
            println!(
                "{}",
                serde_json::json!({"token": new.token, "line": new.line})
            );
            ExitCode::SUCCESS
        }
        Ok(new) => {
            println!(
                "token (give it to {name}; levee keeps only its hash):\n  {}",
                new.token
            );
            println!("line for the tokens file:\n  {}", new.line);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("levee admin token: {err}");
            ExitCode::from(2)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            file,
            json,
            replica,
        } => {
            if replica {
                check_config::<ReplicaConfig>(&file, json)
            } else {
                check_config::<Config>(&file, json)
            }
        }
        Command::Replica { config } => {
            let config = match load::<ReplicaConfig>(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_tracing(&config.log.level, config.log.json);
            block_on_daemon(
                |shutdown| async move { crate::standby::run(config, shutdown, None).await },
            )
        }
        Command::Run { config, take_over } => {
            let config = match load::<Config>(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_tracing(&config.log.level, config.log.json);
            block_on_daemon(|shutdown| async move {
                match take_over {
                    true => crate::take_over(config, shutdown, None).await,
                    false => crate::run(config, shutdown, None).await,
                }
            })
        }
        Command::Admin { command } => admin(command),
        Command::Journal { command } => crate::compliance::run(command),
        Command::Status { remote } => crate::admin::commands::status(&remote),
        Command::Switchover { to, reason, remote } => {
            crate::admin::commands::switch(&remote, Some(&to), &reason)
        }
        Command::Failback { reason, remote } => {
            crate::admin::commands::switch(&remote, None, &reason)
        }
        Command::Demo { install } => {
            init_tracing("warn", false);
            match crate::demo::run(install) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("levee demo: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads a daemon's configuration, or says why not and gives the exit code.
fn load<T: ConfigFile>(path: &std::path::Path) -> Result<T, ExitCode> {
    T::load(path).map_err(|err| {
        eprintln!("levee: {}: configuration rejected:\n{err}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config<T: ConfigFile>(file: &std::path::Path, json: bool) -> ExitCode {
    let result = T::load(file);
    if json {
        let problems: Vec<serde_json::Value> = match &result {
            Ok(_) => Vec::new(),
            Err(levee_config::ConfigError::Invalid(problems)) => problems
                .iter()
                .map(|p| serde_json::json!({"key": p.key, "line": p.line, "message": p.message}))
                .collect(),
            Err(err) => {
                vec![serde_json::json!({"key": "", "line": null, "message": err.to_string()})]
            }
        };
        println!(
            "{}",
            serde_json::json!({"ok": result.is_ok(), "problems": problems})
        );
    } else {
        match &result {
            Ok(_) => println!("OK"),
            Err(err) => eprintln!("{}:\n{err}", file.display()),
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// Runs a daemon on a fresh runtime until SIGINT/SIGTERM.
fn block_on_daemon<F, Fut>(daemon: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::RunError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("levee: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match daemon(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(%err, "levee failed");
                eprintln!("levee: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGINT or SIGTERM begins a graceful shutdown (sessions get 421, DATA in flight
/// completes within the grace period).
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Logs to stderr; `RUST_LOG` overrides the configured level. Colours only on a terminal:
/// a log file or journald gets plain text that grep finds.
pub fn init_tracing(level: &str, json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
