//! AUTH, relayed to the upstream: levee never decides on its own who may send.
//!
//! Every SASL exchange line goes to the mail server and every challenge comes back to the
//! client unchanged. levee keeps only the login name (for the journal and for XCLIENT
//! LOGIN on retries); passwords pass through memory and are never logged or stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{ConnError, Connection, Line};
use super::reply::{self, Reply};
use super::session::Session;

/// A SASL exchange longer than this many round trips is not a real client.
const MAX_STEPS: usize = 8;

impl Session {
    pub(super) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        line: &[u8],
        mechanism: u64,
        initial: &str,
    ) -> Result<(), ConnError> {
        if self.helo.is_none() {
            conn.reply(&reply::NEED_HELO);
            return Ok(());
        }
        if self.auth_user.is_some() {
            conn.reply(&reply::ALREADY_AUTH);
            return Ok(());
        }
        if self.tx.is_some() {
            conn.reply(&reply::AUTH_IN_TX);
            return Ok(());
        }
        self.follow_active().await;
        if self.upstream.is_none() {
            conn.reply(&reply::AUTH_TEMP);
            return Ok(());
        }
        let Some(offered) = self.offered_auth() else {
            let refusal = if self.tls {
                reply::AUTH_UNAVAILABLE
            } else {
                reply::TLS_REQUIRED
            };
            conn.reply(&refusal);
            return Ok(());
        };
        if offered & mechanism == 0 {
            conn.reply(&Reply::own(
                504,
                [5, 5, 4],
                "Unrecognized authentication type",
            ));
            return Ok(());
        }

        let mut login = (mechanism == AUTH_PLAIN && !initial.is_empty())
            .then(|| plain_login(initial))
            .flatten();
        // An upstream session that saw AUTH is never handed to another client.
        if let Some(upstream) = self.upstream.as_mut() {
            upstream.forbid_reuse();
        }
        let mut verdict = self.forward(line).await;
        let limits = &self.shared.config.smtp;
        let (max_line, idle) = (limits.max_line_length, limits.command_timeout);
        for step in 0..MAX_STEPS {
            let Some(challenge) = verdict.take() else {
                conn.reply(&reply::AUTH_TEMP);
                return Ok(());
            };
            if challenge.code() != 334 {
                if challenge.code() == 235 {
                    tracing::info!(user = login.as_deref().unwrap_or("?"), "authenticated");
                    self.auth_user = login.or_else(|| Some(String::new()));
                } else {
                    tracing::info!(code = challenge.code(), "authentication refused");
                }
                conn.reply(&challenge);
                return Ok(());
            }
            conn.reply(&challenge);
            let response = match conn.read_line(max_line, idle).await? {
                Line::Complete(response) => response,
                Line::TooLong => {
                    // Cancel the exchange upstream, then tell the client why.
                    let _ = self.forward(b"*\r\n").await;
                    conn.reply(&reply::LINE_TOO_LONG);
                    return Ok(());
                }
            };
            if login.is_none() {
                let text = String::from_utf8_lossy(&response);
                login = match mechanism {
                    AUTH_PLAIN => plain_login(text.trim()),
                    AUTH_LOGIN if step == 0 => decode_text(text.trim()),
                    _ => None,
                };
            }
            verdict = self.forward(&response).await;
        }
        let _ = self.forward(b"*\r\n").await;
        conn.reply(&Reply::own(
            501,
            [5, 7, 0],
            "Authentication exchange too long",
        ));
        Ok(())
    }
}

/// The authentication identity of a SASL PLAIN response (`authzid NUL authcid NUL
/// password`); the password is dropped here.
pub(crate) fn plain_login(response_b64: &str) -> Option<String> {
    let decoded = STANDARD.decode(response_b64).ok()?;
    let mut parts = decoded.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let authcid = parts.next()?;
    String::from_utf8(authcid.to_vec()).ok()
}

fn decode_text(b64: &str) -> Option<String> {
    String::from_utf8(STANDARD.decode(b64).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_yields_login_only() {
        let encoded = STANDARD.encode(b"\0alice\0secret-pw");
        assert_eq!(plain_login(&encoded).as_deref(), Some("alice"));
        assert_eq!(plain_login("%%%"), None);
    }
}
