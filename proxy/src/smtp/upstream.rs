//! The upstream side: levee as an SMTP client of the mail server it fronts.
//!
//! Used in lockstep by client sessions (every envelope command gets the server's real
//! verdict) and by the delivery worker for retries from the journal. Every read is bounded
//! by the upstream timeout; every failure says it was the upstream that failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, Error as ProtoError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::reply::Reply;

/// Longest reply levee accepts from an upstream before calling it broken.
const MAX_REPLY: usize = 64 * 1024;

/// An upstream failure. All of these mean "the upstream is unusable now"; a retry later
/// (or against another backend) is safe because nothing was acknowledged on its behalf.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr}: connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("upstream {addr}: i/o: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {addr}: closed the connection")]
    Closed { addr: SocketAddr },
    #[error("upstream {addr}: malformed reply")]
    Protocol { addr: SocketAddr },
    #[error("upstream connection task failed: {0}")]
    Task(String),
    #[error("upstream {addr}: refused the session: {reply}")]
    Refused { addr: SocketAddr, reply: Reply },
}

impl UpstreamError {
    /// The server could not be reached or broke off (a fact about the site's health), as
    /// opposed to a reply it chose to give.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Io { .. }
                | UpstreamError::Closed { .. }
                | UpstreamError::Protocol { .. }
        )
    }
}

/// Who the client really is, passed with XCLIENT when the upstream allows it.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    pub addr: Option<SocketAddr>,
    pub helo: Option<String>,
    /// SASL login name, for retries of mail that was submitted with AUTH.
    pub login: Option<String>,
}

/// An open, greeted SMTP connection to an upstream mail server.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    stream: TcpStream,
    rbuf: Vec<u8>,
    timeout: Duration,
    ehlo: EhloResponse<String>,
    /// smtp-proto does not model XCLIENT (a Postfix extension), so it is read off the raw
    /// EHLO lines.
    xclient: bool,
    /// The upstream took the current client's identity with XCLIENT.
    identity_passed: bool,
    /// Client sessions this connection has served, the current one included.
    uses: u32,
    /// Nothing happened that the upstream might hold against the next client on this
    /// connection: no error reply, no AUTH.
    clean: bool,
    /// A message's final dot went out and its reply has not come back: if the connection
    /// breaks now, the MTA may have queued the message without confirming it.
    awaiting_final: bool,
}

impl Upstream {
    /// Connects, reads the greeting, says EHLO as levee and, when offered, passes the
    /// client's identity with XCLIENT. The session is then ready for [`Upstream::hello`]
    /// with the client's own HELO name, so a client session can start this before the
    /// client has said EHLO and pay one round trip at EHLO time instead of five.
    pub async fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
        our_name: &str,
        client: &ClientIdentity,
    ) -> Result<Upstream, UpstreamError> {
        let mut upstream = Upstream::dial(addr, connect_timeout, reply_timeout).await?;
        match (known_xclient(addr), client.addr.is_some()) {
            // Learnt from an earlier session: skip the probing EHLO (Postfix takes XCLIENT
            // at any time outside a transaction).
            (Some(true), true) => {
                if !upstream.xclient(client).await? {
                    forget_xclient(addr);
                }
            }
            (Some(false), _) | (Some(true), false) => {}
            (None, _) => {
                upstream.hello(our_name).await?;
                learn_xclient(addr, upstream.xclient);
                if upstream.xclient && client.addr.is_some() {
                    upstream.xclient(client).await?;
                }
            }
        }
        Ok(upstream)
    }

    /// Passes the client's identity; true when the upstream took it (and now expects EHLO).
    async fn xclient(&mut self, client: &ClientIdentity) -> Result<bool, UpstreamError> {
        self.identity_passed = false;
        let reply = self.command(xclient_line(client).as_bytes()).await?;
        if reply.code() == 220 {
            self.identity_passed = true;
            return Ok(true);
        }
        tracing::warn!(upstream = %self.addr, reply = %reply, "XCLIENT refused");
        Ok(false)
    }

    /// Starts serving a new client on this (pooled) connection: XCLIENT with its identity
    /// resets the upstream's session as if the client had just connected. False when the
    /// upstream refused; an error when the connection is gone.
    pub(super) async fn hand_over(
        &mut self,
        client: &ClientIdentity,
    ) -> Result<bool, UpstreamError> {
        self.uses += 1;
        self.xclient(client).await
    }

    /// Whether a later client session may take this connection over (see [`super::pool`]).
    pub(super) fn reusable(&self, max_uses: u32) -> bool {
        self.clean && self.identity_passed && self.uses < max_uses && self.rbuf.is_empty()
    }

    /// Marks the connection as carrying state of this client that must not pass to
    /// another one (an authenticated identity, for one).
    pub(super) fn forbid_reuse(&mut self) {
        self.clean = false;
    }

    /// TCP connect and the server's greeting.
    async fn dial(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Upstream, UpstreamError> {
        let stream = match timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    addr,
                    after: connect_timeout,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let mut upstream = Upstream {
            addr,
            stream,
            rbuf: Vec::with_capacity(1024),
            timeout: reply_timeout,
            ehlo: EhloResponse::new(String::new()),
            xclient: false,
            identity_passed: false,
            uses: 1,
            clean: true,
            awaiting_final: false,
        };
        upstream.expect_greeting().await?;
        Ok(upstream)
    }

    /// An LMTP session (RFC 2033): greeting and LHLO. After the final dot of a message
    /// the server answers once per accepted recipient ([`Upstream::end_body_lmtp`]).
    pub async fn connect_lmtp(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
        our_name: &str,
    ) -> Result<Upstream, UpstreamError> {
        let mut upstream = Upstream::dial(addr, connect_timeout, reply_timeout).await?;
        upstream.greet("LHLO", our_name).await?;
        Ok(upstream)
    }

    /// Connects and says EHLO as `helo` in one go (for callers with no client to wait for).
    pub async fn open(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
        our_name: &str,
        client: &ClientIdentity,
    ) -> Result<Upstream, UpstreamError> {
        let mut upstream =
            Upstream::connect(addr, connect_timeout, reply_timeout, our_name, client).await?;
        let helo = client.helo.as_deref().unwrap_or(our_name);
        upstream.hello(helo).await?;
        Ok(upstream)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// levee's end of the connection (tells one connection from another).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    /// The upstream's EHLO capabilities.
    pub fn capabilities(&self) -> &EhloResponse<String> {
        &self.ehlo
    }

    async fn expect_greeting(&mut self) -> Result<(), UpstreamError> {
        let greeting = self.read_reply().await?;
        if greeting.code() != 220 {
            return Err(UpstreamError::Refused {
                addr: self.addr,
                reply: greeting,
            });
        }
        Ok(())
    }

    /// Says EHLO as `name` and records the capabilities (this also begins a fresh SMTP
    /// session after XCLIENT).
    pub async fn hello(&mut self, name: &str) -> Result<(), UpstreamError> {
        self.greet("EHLO", name).await
    }

    async fn greet(&mut self, verb: &str, name: &str) -> Result<(), UpstreamError> {
        self.write(format!("{verb} {name}\r\n").as_bytes()).await?;
        let raw = self.read_raw_reply().await?;
        match EhloResponse::parse(&mut raw.iter()) {
            Ok(ehlo) => {
                self.ehlo = ehlo;
                self.xclient = offers_keyword(&raw, b"XCLIENT");
                Ok(())
            }
            Err(_) => Err(UpstreamError::Refused {
                addr: self.addr,
                reply: Reply::Relayed {
                    code: reply_code(&raw).unwrap_or(0),
                    raw,
                },
            }),
        }
    }

    /// Sends one command line (CRLF included) and returns the reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, UpstreamError> {
        self.write(line).await?;
        self.read_reply().await
    }

    /// DATA, the dot-stuffed body and the final dot; returns the final reply (or the
    /// refusal of DATA itself).
    pub async fn send_body(&mut self, body: &[u8]) -> Result<Reply, UpstreamError> {
        if let Some(refusal) = self.begin_body(body).await? {
            return Ok(refusal);
        }
        self.end_body().await
    }

    /// DATA, `header` and the client's `body`, and the final dot (one write after the go
    /// ahead); returns the final reply, or the refusal of DATA itself.
    pub async fn send_traced(
        &mut self,
        header: &[u8],
        body: &[u8],
    ) -> Result<Reply, UpstreamError> {
        if let Some(refusal) = self.begin_data().await? {
            return Ok(refusal);
        }
        self.finish_data(header, body).await
    }

    /// DATA alone; `Some(reply)` when it was refused, `None` after the go-ahead (354).
    pub async fn begin_data(&mut self) -> Result<Option<Reply>, UpstreamError> {
        let go_ahead = self.command(b"DATA\r\n").await?;
        Ok((go_ahead.code() != 354).then_some(go_ahead))
    }

    /// After [`Upstream::begin_data`]: `header` (complete CRLF-terminated header lines),
    /// the dot-stuffed `body` and the final dot; returns the upstream's verdict.
    pub async fn finish_data(
        &mut self,
        header: &[u8],
        body: &[u8],
    ) -> Result<Reply, UpstreamError> {
        let mut wire = Vec::with_capacity(header.len() + body.len() + body.len() / 64 + 8);
        dot_stuff(header, &mut wire);
        dot_stuff(body, &mut wire);
        wire.extend_from_slice(b".\r\n");
        self.final_dot(&wire).await
    }

    /// DATA and the dot-stuffed body, but not the final dot: the upstream holds an
    /// incomplete message that it discards if the connection drops now. `Some(reply)` when
    /// DATA itself was refused.
    pub async fn begin_body(&mut self, body: &[u8]) -> Result<Option<Reply>, UpstreamError> {
        if let Some(refusal) = self.begin_data().await? {
            return Ok(Some(refusal));
        }
        let mut wire = Vec::with_capacity(body.len() + body.len() / 64 + 8);
        dot_stuff(body, &mut wire);
        self.write(&wire).await?;
        Ok(None)
    }

    /// The final dot after [`Upstream::begin_body`]; returns the upstream's verdict.
    pub async fn end_body(&mut self) -> Result<Reply, UpstreamError> {
        self.final_dot(b".\r\n").await
    }

    /// Sends `wire`, which ends a message with its final dot, and reads the verdict.
    async fn final_dot(&mut self, wire: &[u8]) -> Result<Reply, UpstreamError> {
        self.awaiting_final = true;
        let verdict = self.command(wire).await?;
        self.awaiting_final = false;
        Ok(verdict)
    }

    /// The connection failed between a message's final dot and the MTA's verdict: the MTA
    /// may hold that message, queued, without having said so.
    pub fn lost_after_final_dot(&self) -> bool {
        self.awaiting_final
    }

    /// The final dot of an LMTP transaction: one verdict per accepted recipient, in RCPT
    /// order.
    pub async fn end_body_lmtp(&mut self, recipients: usize) -> Result<Vec<Reply>, UpstreamError> {
        self.write(b".\r\n").await?;
        let mut verdicts = Vec::with_capacity(recipients);
        for _ in 0..recipients {
            verdicts.push(self.read_reply().await?);
        }
        Ok(verdicts)
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), self.command(b"QUIT\r\n")).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let addr = self.addr;
        match timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(UpstreamError::Io { addr, source }),
            Err(_) => Err(UpstreamError::Timeout {
                addr,
                after: self.timeout,
            }),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, UpstreamError> {
        let raw = self.read_raw_reply().await?;
        let code = reply_code(&raw).ok_or(UpstreamError::Protocol { addr: self.addr })?;
        if code >= 400 {
            self.clean = false;
        }
        Ok(Reply::Relayed { code, raw })
    }

    /// Reads one complete (possibly multi-line) reply, returning its raw lines.
    async fn read_raw_reply(&mut self) -> Result<Vec<u8>, UpstreamError> {
        loop {
            let mut receiver = ResponseReceiver::default();
            let mut iter = self.rbuf.iter();
            match receiver.parse(&mut iter) {
                Ok(_) => {
                    let used = self.rbuf.len() - iter.len();
                    let raw: Vec<u8> = self.rbuf.drain(..used).collect();
                    return Ok(raw);
                }
                Err(ProtoError::NeedsMoreData { .. }) => {}
                Err(_) => return Err(UpstreamError::Protocol { addr: self.addr }),
            }
            if self.rbuf.len() > MAX_REPLY {
                return Err(UpstreamError::Protocol { addr: self.addr });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), UpstreamError> {
        let addr = self.addr;
        self.rbuf.reserve(4096);
        match timeout(self.timeout, self.stream.read_buf(&mut self.rbuf)).await {
            Ok(Ok(0)) => Err(UpstreamError::Closed { addr }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(UpstreamError::Io { addr, source }),
            Err(_) => Err(UpstreamError::Timeout {
                addr,
                after: self.timeout,
            }),
        }
    }
}

/// What earlier sessions learnt of each upstream's XCLIENT support. A cache of a remote
/// fact: wrong only until the next session that finds out otherwise.
static XCLIENT_SUPPORT: Mutex<Option<HashMap<SocketAddr, bool>>> = Mutex::new(None);

fn known_xclient(addr: SocketAddr) -> Option<bool> {
    let map = XCLIENT_SUPPORT.lock().unwrap_or_else(|p| p.into_inner());
    map.as_ref().and_then(|m| m.get(&addr).copied())
}

fn learn_xclient(addr: SocketAddr, offered: bool) {
    let mut map = XCLIENT_SUPPORT.lock().unwrap_or_else(|p| p.into_inner());
    map.get_or_insert_with(HashMap::new).insert(addr, offered);
}

fn forget_xclient(addr: SocketAddr) {
    let mut map = XCLIENT_SUPPORT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(map) = map.as_mut() {
        map.remove(&addr);
    }
}

/// Whether an EHLO reply announces `keyword` (as the first word of one of its lines).
fn offers_keyword(raw: &[u8], keyword: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').any(|line| {
        line.get(4..4 + keyword.len())
            .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
            && line
                .get(4 + keyword.len())
                .is_none_or(|&b| b == b' ' || b == b'\r')
    })
}

/// The three-digit code at the start of a reply.
fn reply_code(raw: &[u8]) -> Option<u16> {
    let digits = raw.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// RFC 5321 4.5.2 transparency: a line starting with "." gets another, and the body ends
/// with CRLF (added when it lacks one), ready for the final "." CRLF.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &byte in body {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// `XCLIENT ADDR=.. PORT=.. [HELO=..] [LOGIN=..]` with xtext-encoded values (RFC 3461).
fn xclient_line(client: &ClientIdentity) -> String {
    let mut line = String::from("XCLIENT");
    if let Some(addr) = client.addr {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("IPV6:{ip}"),
        };
        line.push_str(&format!(" ADDR={ip} PORT={}", addr.port()));
    }
    if let Some(helo) = &client.helo {
        line.push_str(&format!(" HELO={}", xtext(helo)));
    }
    if let Some(login) = &client.login {
        line.push_str(&format!(" LOGIN={}", xtext(login)));
    }
    line.push_str("\r\n");
    line
}

fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (33..=126).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_only() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\nb.c\r\n..\r\n", &mut out);
        assert_eq!(out, b"..a\r\nb.c\r\n...\r\n");
        out.clear();
        dot_stuff(b"no newline", &mut out);
        assert_eq!(out, b"no newline\r\n");
    }

    #[test]
    fn xclient_values_are_xtext() {
        let line = xclient_line(&ClientIdentity {
            addr: Some("192.0.2.7:4242".parse().unwrap()),
            helo: Some("a b=c".into()),
            login: Some("alice".into()),
        });
        assert_eq!(
            line,
            "XCLIENT ADDR=192.0.2.7 PORT=4242 HELO=a+20b+3Dc LOGIN=alice\r\n"
        );
    }

    #[test]
    fn xclient_is_read_off_the_ehlo_lines() {
        let raw = b"250-mx.example\r\n250-XCLIENT NAME ADDR PORT\r\n250 8BITMIME\r\n";
        assert!(offers_keyword(raw, b"XCLIENT"));
        assert!(!offers_keyword(b"250-mx\r\n250 XCLIENTS\r\n", b"XCLIENT"));
        assert!(offers_keyword(b"250-mx\r\n250 xclient\r\n", b"XCLIENT"));
    }

    #[test]
    fn reply_code_needs_three_digits() {
        assert_eq!(reply_code(b"250 ok\r\n"), Some(250));
        assert_eq!(reply_code(b"2x0 ok\r\n"), None);
        assert_eq!(reply_code(b"25"), None);
    }
}
