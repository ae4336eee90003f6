//! Rules that span several keys or need more than a type check. Each rule returns a
//! [`Problem`] naming the key to fix; [`crate::locate`] adds the line afterwards.

use std::collections::HashSet;

use std::path::Path;

use crate::{Config, Problem, ReplicaConfig, TlsMode};

/// Every problem in `config`; empty when it is usable.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |key: String, message: String| {
        problems.push(Problem {
            key,
            line: None,
            message,
        })
    };

    if config.node.id.trim().is_empty() {
        push("node.id".into(), "must not be empty".into());
    }
    let smtp = &config.smtp;
    if smtp.listen.is_empty() {
        push(
            "smtp.listen".into(),
            "at least one [[smtp.listen]] is required".into(),
        );
    }
    if smtp.hostname.trim().is_empty() || smtp.hostname.contains(char::is_whitespace) {
        push(
            "smtp.hostname".into(),
            "must be a host name without spaces".into(),
        );
    }
    // Every listening socket, SMTP and IMAP: one address each, TLS only with a [tls].
    let listeners = (smtp.listen.iter().map(|l| ("smtp", l.addr, l.tls)))
        .enumerate()
        .chain((config.imap.listen.iter().map(|l| ("imap", l.addr, l.tls))).enumerate());
    let mut seen = HashSet::new();
    for (i, (proto, addr, tls)) in listeners {
        // Port 0: each listener gets a free port of its own.
        if addr.port() != 0 && !seen.insert(addr) {
            push(
                format!("{proto}.listen[{i}].addr"),
                format!("{addr} is used by another listener"),
            );
        }
        if tls != TlsMode::None && config.tls.is_none() {
            push(
                format!("{proto}.listen[{i}].tls"),
                "needs a [tls] section with cert and key (or tls = \"none\")".into(),
            );
        }
    }
    let imap = &config.imap;
    if let Some(replica) = &config.upstream.replica
        && config.upstream.primary.imap.is_some() != replica.imap.is_some()
    {
        push(
            "upstream.replica.imap".into(),
            "give both sites an IMAP server, or neither".into(),
        );
    }
    let primary = &config.upstream.primary;
    if primary.master_user.is_some() != primary.master_password_file.is_some() {
        push(
            "upstream.primary.master_user".into(),
            "master_user and master_password_file go together".into(),
        );
    }
    if primary.master_user.is_some() && primary.imap.is_none() {
        push(
            "upstream.primary.master_user".into(),
            "needs upstream.primary.imap".into(),
        );
    }
    file_exists(
        &mut push,
        "upstream.primary.master_password_file",
        primary.master_password_file.as_ref(),
    );
    if !imap.listen.is_empty() && config.upstream.primary.imap.is_none() {
        push(
            "upstream.primary.imap".into(),
            "the IMAP server's address is needed for [[imap.listen]]".into(),
        );
    }
    if imap.max_line_length < 1024 {
        push(
            "imap.max_line_length".into(),
            "must be at least 1024 bytes".into(),
        );
    }
    if imap.max_literal < 1024 {
        push(
            "imap.max_literal".into(),
            "must be at least 1024 bytes".into(),
        );
    }
    if smtp.max_line_length < 512 {
        push(
            "smtp.max_line_length".into(),
            "must be at least 512 (RFC 5321 minimum)".into(),
        );
    }
    if smtp.max_message_size < 1024 {
        push(
            "smtp.max_message_size".into(),
            "must be at least 1024 bytes".into(),
        );
    }
    for (key, value) in [
        ("smtp.max_recipients", smtp.max_recipients),
        ("smtp.max_connections", smtp.max_connections),
        ("delivery.workers", config.delivery.workers),
        ("imap.max_connections", config.imap.max_connections),
        ("failover.failures", config.failover.failures as usize),
    ] {
        if value == 0 {
            push(key.into(), "must be at least 1".into());
        }
    }
    for (key, value) in [
        ("smtp.command_timeout", smtp.command_timeout),
        ("smtp.data_timeout", smtp.data_timeout),
        ("smtp.upstream_timeout", smtp.upstream_timeout),
        ("smtp.connect_timeout", smtp.connect_timeout),
        ("delivery.retry_initial", config.delivery.retry_initial),
        ("imap.login_timeout", config.imap.login_timeout),
        ("imap.idle_timeout", config.imap.idle_timeout),
        ("imap.connect_timeout", config.imap.connect_timeout),
        ("failover.probe_interval", config.failover.probe_interval),
        ("failover.probe_timeout", config.failover.probe_timeout),
    ] {
        if value.is_zero() {
            push(key.into(), "must be longer than zero".into());
        }
    }
    if config.delivery.retry_max < config.delivery.retry_initial {
        push(
            "delivery.retry_max".into(),
            "must not be shorter than delivery.retry_initial".into(),
        );
    }
    for (i, domain) in smtp.local_domains.iter().enumerate() {
        if domain.is_empty() || domain.contains(['@', ' ']) {
            push(
                format!("smtp.local_domains[{i}]"),
                format!("{domain:?} is not a domain name"),
            );
        }
    }
    if let Some(tls) = &config.tls {
        file_exists(&mut push, "tls.cert", Some(&tls.cert));
        file_exists(&mut push, "tls.key", Some(&tls.key));
    }
    if let Some(metrics) = config.metrics.listen
        && smtp.listen.iter().any(|l| l.addr == metrics)
    {
        push(
            "metrics.listen".into(),
            format!("{metrics} is also an SMTP listener"),
        );
    }
    if let Some(replication) = &config.replication {
        let r = replication;
        for (key, path) in [
            ("replication.ca", Some(&r.ca)),
            ("replication.token_file", r.token_file.as_ref()),
            ("replication.client_cert", r.client_cert.as_ref()),
            ("replication.client_key", r.client_key.as_ref()),
        ] {
            file_exists(&mut push, key, path);
        }
        if r.token_file.is_none() && r.client_cert.is_none() {
            push(
                "replication".into(),
                "needs token_file or client_cert/client_key to authenticate to the replica".into(),
            );
        }
        if r.client_cert.is_some() != r.client_key.is_some() {
            push(
                "replication.client_key".into(),
                "client_cert and client_key go together".into(),
            );
        }
        if r.window == 0 || r.batch_bytes < 4096 {
            push(
                "replication.window".into(),
                "window must be at least 1 and batch_bytes at least 4096".into(),
            );
        }
        if r.sync_timeout.is_zero() || r.heartbeat.is_zero() {
            push(
                "replication.sync_timeout".into(),
                "sync_timeout and heartbeat must be longer than zero".into(),
            );
        }
    }
    if let Some(alerts) = &config.alerts {
        let bad =
            |a: &String| a.trim().is_empty() || !a.contains('@') || a.contains(char::is_whitespace);
        if alerts.to.is_empty() || alerts.to.iter().any(bad) {
            push(
                "alerts.to".into(),
                "needs at least one address, each like admin@example.org".into(),
            );
        }
        if alerts.from.as_ref().is_some_and(bad) {
            push(
                "alerts.from".into(),
                "must be an address like levee@example.org".into(),
            );
        }
    }
    if let Some(admin) = &config.admin {
        if admin.tls == crate::AdminTls::None && !admin.listen.ip().is_loopback() {
            push(
                "admin.tls".into(),
                "\"none\" is accepted only on a loopback address: tokens must not cross a network in clear".into(),
            );
        }
        if admin.tls == crate::AdminTls::Implicit && config.tls.is_none() {
            push(
                "admin.tls".into(),
                "needs a [tls] section (certificate and key)".into(),
            );
        }
        file_exists(&mut push, "admin.tokens", Some(&admin.tokens));
        file_exists(&mut push, "admin.client_ca", admin.client_ca.as_ref());
        if admin.client_ca.is_some() && admin.tls == crate::AdminTls::None {
            push(
                "admin.client_ca".into(),
                "client certificates need tls = \"implicit\"".into(),
            );
        }
        if admin.max_failures == 0 || admin.failure_window.is_zero() {
            push(
                "admin.max_failures".into(),
                "max_failures and failure_window must be above zero".into(),
            );
        }
    }
    file_exists(
        &mut push,
        "journal.key_file",
        config.journal.key_file.as_ref(),
    );
    if let Some(retention) = &config.retention
        && (retention.days == 0 || retention.interval.is_zero())
    {
        push(
            "retention.days".into(),
            "days and interval must be above zero (leave [retention] out to keep everything)"
                .into(),
        );
    }
    check_log(&mut push, &config.log.level);
    problems
}

/// The rules of `levee replica`'s file.
pub fn check_replica(config: &ReplicaConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |key: String, message: String| {
        problems.push(Problem {
            key,
            line: None,
            message,
        })
    };
    let r = &config.replica;
    for (key, path) in [
        ("replica.cert", Some(&r.cert)),
        ("replica.key", Some(&r.key)),
        ("replica.token_file", r.token_file.as_ref()),
        ("replica.client_ca", r.client_ca.as_ref()),
        ("journal.key_file", config.journal.key_file.as_ref()),
    ] {
        file_exists(&mut push, key, path);
    }
    if r.token_file.is_none() && r.client_ca.is_none() {
        push(
            "replica".into(),
            "needs token_file or client_ca: a replica never accepts an unauthenticated stream"
                .into(),
        );
    }
    let apply = &config.apply;
    if apply.lmtp.is_none() == apply.smtp.is_none() {
        push(
            "apply".into(),
            "set exactly one of lmtp or smtp (the standby mail server)".into(),
        );
    }
    if apply.local_domains.is_empty() {
        push(
            "apply.local_domains".into(),
            "list the domains delivered at the replica".into(),
        );
    }
    if apply.hostname.is_empty() || !apply.hostname.chars().all(|c| c.is_ascii_graphic()) {
        push(
            "apply.hostname".into(),
            "must be a host name without spaces (it goes into LHLO and a Received header)".into(),
        );
    }
    let dedupe_keys = [
        apply.imap.is_some(),
        apply.master_user.is_some(),
        apply.master_password_file.is_some(),
    ];
    if dedupe_keys.contains(&true) && dedupe_keys.contains(&false) {
        push(
            "apply.imap".into(),
            "imap, master_user and master_password_file go together (the duplicate check)".into(),
        );
    }
    if apply.imap.is_some() && apply.lmtp.is_none() {
        push(
            "apply.imap".into(),
            "the duplicate check needs lmtp: over SMTP a message may wait in the standby's queue, \
             where IMAP cannot see it"
                .into(),
        );
    }
    if let Some(user) = &apply.master_user
        && (user.is_empty() || user.contains(['\0', '\r', '\n']))
    {
        push(
            "apply.master_user".into(),
            "must be a non-empty user name".into(),
        );
    }
    file_exists(
        &mut push,
        "apply.master_password_file",
        apply.master_password_file.as_ref(),
    );
    check_log(&mut push, &config.log.level);
    problems
}

fn file_exists(
    push: &mut impl FnMut(String, String),
    key: &str,
    path: Option<&std::path::PathBuf>,
) {
    if let Some(path) = path
        && !Path::new(path).is_file()
    {
        push(
            key.into(),
            format!("{} is not a readable file", path.display()),
        );
    }
}

fn check_log(push: &mut impl FnMut(String, String), level: &str) {
    if !["error", "warn", "info", "debug", "trace"].contains(&level) {
        push(
            "log.level".into(),
            "must be one of error, warn, info, debug, trace".into(),
        );
    }
}
