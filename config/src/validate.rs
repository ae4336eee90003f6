//! Rules that span several keys or need more than a type check. Each rule returns a
//! [`Problem`] naming the key to fix; [`crate::locate`] adds the line afterwards.

use std::collections::HashSet;

use crate::{Config, Problem, TlsMode};

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
    let mut seen = HashSet::new();
    for (i, listener) in smtp.listen.iter().enumerate() {
        if !seen.insert(listener.addr) {
            push(
                format!("smtp.listen[{i}].addr"),
                format!("{} is used by another listener", listener.addr),
            );
        }
        if listener.tls != TlsMode::None && config.tls.is_none() {
            push(
                format!("smtp.listen[{i}].tls"),
                "needs a [tls] section with cert and key (or tls = \"none\")".into(),
            );
        }
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
        for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
            if !path.is_file() {
                push(
                    key.into(),
                    format!("{} is not a readable file", path.display()),
                );
            }
        }
    }
    if let Some(metrics) = config.metrics.listen
        && smtp.listen.iter().any(|l| l.addr == metrics)
    {
        push(
            "metrics.listen".into(),
            format!("{metrics} is also an SMTP listener"),
        );
    }
    if !["error", "warn", "info", "debug", "trace"].contains(&config.log.level.as_str()) {
        push(
            "log.level".into(),
            "must be one of error, warn, info, debug, trace".into(),
        );
    }
    problems
}
