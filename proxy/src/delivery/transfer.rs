//! One delivery over SMTP: a fresh connection to a backend's MTA, the original client's
//! identity (XCLIENT), the envelope and the message behind the trace header that names its
//! record, and what the verdict means for the record.

use std::net::SocketAddr;

use levee_config::{Config, ListenerKind};
use levee_journal::MessageRecord;

use super::{Attempt, Due};
use crate::failover::controller::Backend;
use crate::smtp::reply::Reply;
use crate::smtp::route::Routes;
use crate::smtp::upstream::{ClientIdentity, Upstream, UpstreamError};
use crate::trace;

/// One delivery of `due` to `rcpts` at `backend`'s MTA over a fresh connection, with the
/// original client's identity (XCLIENT) and the trace header that names the record.
pub(crate) async fn deliver_to(
    config: &Config,
    routes: &Routes,
    backend: Backend,
    due: &Due,
    rcpts: &[&str],
) -> Attempt {
    let message = &due.message;
    let identity = ClientIdentity {
        addr: message
            .client
            .addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok()),
        helo: message.client.helo.clone(),
        login: message
            .client
            .authenticated_user
            .clone()
            .filter(|u| !u.is_empty()),
    };
    let mut upstream = match Upstream::open(
        routes.addr(backend, ListenerKind::Relay),
        config.smtp.connect_timeout,
        config.smtp.upstream_timeout,
        &config.smtp.hostname,
        &identity,
    )
    .await
    {
        Ok(upstream) => upstream,
        Err(err) => {
            routes.failed(backend, &err);
            return Attempt::Unreachable(err.to_string());
        }
    };
    let id = trace::trace_id(due.seq, &due.chain);
    let header = trace::smtp_received(&config.smtp.hostname, &message.client, &id, due.accepted_ms);
    let outcome = transfer(&mut upstream, message, rcpts, &header).await;
    match outcome {
        Ok(attempt) => {
            upstream.quit().await;
            attempt
        }
        Err(err) => {
            routes.failed(backend, &err);
            if backend == Backend::Primary && upstream.lost_after_final_dot() {
                Attempt::Unconfirmed(err.to_string())
            } else {
                Attempt::Temporary(err.to_string())
            }
        }
    }
}

async fn transfer(
    upstream: &mut Upstream,
    message: &MessageRecord,
    rcpts: &[&str],
    header: &str,
) -> Result<Attempt, UpstreamError> {
    let eight_bit = message.body.iter().any(|&b| b >= 0x80);
    let mut mail = format!("MAIL FROM:<{}>", message.mail_from);
    if eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if !message.mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()) {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let verdict = upstream.command(mail.as_bytes()).await?;
    if !verdict.is_positive() {
        return Ok(classify(verdict));
    }
    let mut accepted = 0;
    let mut last_refusal = None;
    for rcpt in rcpts {
        let verdict = upstream
            .command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await?;
        if verdict.is_positive() {
            accepted += 1;
        } else if verdict.code() < 500 {
            // Delivering to the others now would need per-recipient bookkeeping; retrying
            // the whole message later delivers to everyone without losing this one.
            return Ok(Attempt::Temporary(verdict.summary()));
        } else {
            tracing::warn!(rcpt = %rcpt, reply = %verdict, "recipient refused on retry");
            last_refusal = Some(verdict);
        }
    }
    if accepted == 0 {
        let refusal = last_refusal.unwrap_or(Reply::own(554, [5, 5, 1], "No valid recipients"));
        return Ok(classify(refusal));
    }
    // TODO(DSN): recipients refused permanently while others were accepted are logged
    // above; a bounce to the sender for them comes with DSN support.
    let verdict = upstream
        .send_traced(header.as_bytes(), &message.body)
        .await?;
    Ok(classify_final(verdict))
}

fn classify(reply: Reply) -> Attempt {
    if reply.code() >= 500 {
        Attempt::Refused(reply)
    } else {
        Attempt::Temporary(reply.summary())
    }
}

fn classify_final(reply: Reply) -> Attempt {
    if reply.is_positive() {
        Attempt::Delivered(reply)
    } else {
        classify(reply)
    }
}
