//! A Rust IMAP client for load and failover tests: hundreds of concurrent sessions in IDLE
//! and exact round-trip times, plain or with implicit TLS, where a Python process per
//! connection would cost more than what is measured.
//!
//! Just enough IMAP: tagged commands, responses read whole (literals included, bounded),
//! LOGIN, SELECT, IDLE and DONE. Every command waits at most [`IO_TIMEOUT`] for its
//! completion; [`ImapClient::response`] waits as long as the caller lets it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Longest a command waits for its completion.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The name levee's test certificate is issued for (see [`crate::Site::cert_path`]).
pub const SERVER_NAME: &str = "levee.test";
const MAX_LINE: u64 = 64 * 1024;
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

fn broken(what: String) -> io::Error {
    io::Error::other(what)
}

/// How a client reaches the server.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// Implicit TLS (993-style), trusting one certificate.
    Tls(TlsConnector),
}

impl Security {
    /// Implicit TLS trusting the PEM certificate `ca` (levee's self-signed one in tests).
    pub fn tls(ca: &Path) -> io::Result<Security> {
        let config = levee_replica::tls::client_config(ca, None)
            .map_err(|err| broken(format!("TLS client config: {err}")))?;
        Ok(Security::Tls(TlsConnector::from(Arc::new(config))))
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::Plain => "Plain",
            Security::Tls(_) => "Tls",
        })
    }
}

/// A plain or TLS connection.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A tagged command's outcome.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Untagged responses and continuation requests before the completion, literals
    /// included, CRLF kept.
    pub untagged: Vec<Vec<u8>>,
    /// The completion without its tag: `OK ...`, `NO ...` or `BAD ...`.
    pub status: String,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status.starts_with("OK")
    }

    /// The untagged responses, as text (see [`show`]), one after the other.
    pub fn text(&self) -> String {
        self.untagged.iter().map(|r| show(r)).collect()
    }
}

/// One IMAP connection.
#[derive(Debug)]
pub struct ImapClient {
    conn: BufReader<Stream>,
    next: u32,
    /// The tag of the IDLE in progress.
    idling: Option<String>,
}

impl ImapClient {
    /// Connects and reads the greeting, which must be `* OK`.
    pub async fn connect(addr: SocketAddr, security: &Security) -> io::Result<ImapClient> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| broken(format!("connect {addr}: timed out")))??;
        tcp.set_nodelay(true)?;
        let stream = match security {
            Security::Plain => Stream::Plain(tcp),
            Security::Tls(connector) => {
                let name = ServerName::try_from(SERVER_NAME).expect("valid server name");
                let handshake = connector.connect(name, tcp);
                let tls = tokio::time::timeout(IO_TIMEOUT, handshake)
                    .await
                    .map_err(|_| broken(format!("TLS handshake with {addr}: timed out")))??;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut client = ImapClient {
            conn: BufReader::new(stream),
            next: 0,
            idling: None,
        };
        let greeting = tokio::time::timeout(IO_TIMEOUT, client.response())
            .await
            .map_err(|_| broken(format!("no greeting from {addr}")))??;
        if !greeting.starts_with(b"* OK") {
            return Err(broken(format!("greeting from {addr}: {}", show(&greeting))));
        }
        Ok(client)
    }

    /// `LOGIN`; anything but OK is an error.
    pub async fn login(&mut self, user: &str, password: &str) -> io::Result<()> {
        let command = format!("LOGIN {} {}", quote(user), quote(password));
        let reply = self.command(&command).await?;
        if !reply.is_ok() {
            return Err(broken(format!("LOGIN {user}: {}", reply.status)));
        }
        Ok(())
    }

    /// `SELECT`; returns the mailbox's `EXISTS`.
    pub async fn select(&mut self, mailbox: &str) -> io::Result<u32> {
        let reply = self.ok(&format!("SELECT {}", quote(mailbox))).await?;
        reply
            .untagged
            .iter()
            .find_map(|r| exists(r))
            .ok_or_else(|| broken(format!("SELECT {mailbox}: no EXISTS")))
    }

    /// Sends `text` (one line, no literal) under a fresh tag and reads up to its completion.
    pub async fn command(&mut self, text: &str) -> io::Result<Reply> {
        let tag = self.send(text).await?;
        self.complete(&tag, text).await
    }

    /// [`ImapClient::command`]; anything but OK is an error.
    pub async fn ok(&mut self, text: &str) -> io::Result<Reply> {
        let reply = self.command(text).await?;
        if !reply.is_ok() {
            let verb = text.split(' ').next().unwrap_or(text);
            return Err(broken(format!("{verb}: {}", reply.status)));
        }
        Ok(reply)
    }

    /// Enters IDLE and waits for the server's continuation request.
    pub async fn idle(&mut self) -> io::Result<()> {
        let tag = self.send("IDLE").await?;
        self.idle_go_ahead(tag).await
    }

    /// Waits for the continuation request to the IDLE sent (with [`ImapClient::send`])
    /// under `tag`; the client is then idling.
    pub async fn idle_go_ahead(&mut self, tag: String) -> io::Result<()> {
        // The server may report news (`* 7 EXISTS`) before its go-ahead.
        loop {
            let go = tokio::time::timeout(IO_TIMEOUT, self.response())
                .await
                .map_err(|_| broken("IDLE: no continuation request".into()))??;
            if go.starts_with(b"+") {
                break;
            }
            if !go.starts_with(b"* ") {
                return Err(broken(format!("IDLE: {}", show(&go))));
            }
        }
        self.idling = Some(tag);
        Ok(())
    }

    /// Ends IDLE (`DONE`) and reads up to its completion; responses that were still on the
    /// way are in the reply's `untagged`.
    pub async fn done(&mut self) -> io::Result<Reply> {
        let tag = self.send_done().await?;
        self.complete(&tag, "IDLE").await
    }

    /// Sends `DONE` and returns the IDLE's tag, for [`ImapClient::complete`].
    pub async fn send_done(&mut self) -> io::Result<String> {
        let tag = self
            .idling
            .take()
            .ok_or_else(|| broken("DONE outside IDLE".into()))?;
        self.write(b"DONE\r\n").await?;
        Ok(tag)
    }

    /// The next response: one line, with each literal it announces and the rest of the line
    /// after it.
    pub async fn response(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = (&mut self.conn)
                .take(MAX_LINE)
                .read_until(b'\n', &mut out)
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            if !out.ends_with(b"\n") {
                return Err(broken(format!("line longer than {MAX_LINE} bytes")));
            }
            let Some(size) = literal_size(&out[start..]) else {
                return Ok(out);
            };
            if out.len() + size > MAX_RESPONSE {
                return Err(broken(format!("response over {MAX_RESPONSE} bytes")));
            }
            let at = out.len();
            out.resize(at + size, 0);
            self.conn.read_exact(&mut out[at..]).await?;
        }
    }

    /// Sends `text` (one line, no literal) under a fresh tag, which it returns, without
    /// waiting for anything: [`ImapClient::complete`] reads the outcome.
    pub async fn send(&mut self, text: &str) -> io::Result<String> {
        self.next += 1;
        let tag = format!("a{}", self.next);
        self.write(format!("{tag} {text}\r\n").as_bytes()).await?;
        Ok(tag)
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.conn.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Reads responses up to the completion of `tag` (`what` names it in errors).
    pub async fn complete(&mut self, tag: &str, what: &str) -> io::Result<Reply> {
        let read = async {
            let mut untagged = Vec::new();
            loop {
                let response = self.response().await?;
                if let Some(status) = response
                    .strip_prefix(tag.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b" "))
                {
                    let status = String::from_utf8_lossy(status).trim_end().to_string();
                    return Ok(Reply { untagged, status });
                }
                untagged.push(response);
            }
        };
        tokio::time::timeout(IO_TIMEOUT, read)
            .await
            .map_err(|_| broken(format!("{what}: no completion within {IO_TIMEOUT:?}")))?
    }
}

/// `n` from a `* n EXISTS` response.
pub fn exists(response: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(response).ok()?;
    let mut words = text.trim_end().split(' ');
    let (star, n, word) = (words.next()?, words.next()?, words.next()?);
    (star == "*" && word.eq_ignore_ascii_case("EXISTS") && words.next().is_none())
        .then(|| n.parse().ok())
        .flatten()
}

/// Whether `response` is one a client must never see across a failover: `BYE`, or an
/// untagged `NO` / `BAD`.
pub fn is_error(response: &[u8]) -> bool {
    let upper = String::from_utf8_lossy(response).to_ascii_uppercase();
    ["* BYE", "* NO ", "* BAD "]
        .iter()
        .any(|bad| upper.starts_with(bad))
}

/// An IMAP quoted string.
pub fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The response as text for error messages, CRLF trimmed.
pub fn show(response: &[u8]) -> String {
    String::from_utf8_lossy(response).trim_end().to_string()
}

/// The size of the literal a line announces at its end (`{n}` or `{n+}` before CRLF).
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"))?;
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A logged-in session with a mailbox selected, in IDLE.
#[derive(Debug)]
pub struct IdleSession {
    pub client: ImapClient,
    pub user: String,
    /// `EXISTS` at SELECT.
    pub exists: u32,
}

/// Opens `count` sessions to `addr`, session i as user `i % users.len()`, each logged in
/// with INBOX selected and in IDLE, at most `parallel` logging in at once. Returned in
/// order; the first failure fails all.
pub async fn open_idle(
    addr: SocketAddr,
    security: &Security,
    users: &[(String, String)],
    count: usize,
    parallel: usize,
) -> io::Result<Vec<IdleSession>> {
    assert!(!users.is_empty(), "no users to log in as");
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..count {
        let (user, password) = users[i % users.len()].clone();
        let (security, gate) = (security.clone(), gate.clone());
        opening.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("gate open");
            let mut client = ImapClient::connect(addr, &security).await?;
            client.login(&user, &password).await?;
            let exists = client.select("INBOX").await?;
            client.idle().await?;
            Ok::<_, io::Error>((
                i,
                IdleSession {
                    client,
                    user,
                    exists,
                },
            ))
        });
    }
    let mut opened = Vec::with_capacity(count);
    while let Some(done) = opening.join_next().await {
        let (i, session) = done.map_err(|err| broken(format!("session task: {err}")))??;
        opened.push((i, session));
    }
    opened.sort_by_key(|(i, _)| *i);
    Ok(opened.into_iter().map(|(_, session)| session).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exists_literals_and_errors() {
        assert_eq!(exists(b"* 12 EXISTS\r\n"), Some(12));
        assert_eq!(exists(b"* 12 exists\r\n"), Some(12));
        assert_eq!(exists(b"* 12 RECENT\r\n"), None);
        assert_eq!(exists(b"* OK [UIDNEXT 3] EXISTS\r\n"), None);
        assert_eq!(literal_size(b"* 1 FETCH (BODY[] {310}\r\n"), Some(310));
        assert_eq!(literal_size(b"a LOGIN {5+}\r\n"), Some(5));
        assert_eq!(literal_size(b"* 1 FETCH (FLAGS (\\Seen))\r\n"), None);
        assert!(is_error(b"* BYE [UNAVAILABLE] gone\r\n"));
        assert!(is_error(b"* no trouble\r\n"));
        assert!(!is_error(b"* 3 EXISTS\r\n"));
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
