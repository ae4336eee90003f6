//! levee as an IMAP client of its own: the connection its probes, mailbox followers and
//! searches for earlier copies use (a client's session is opened again elsewhere by
//! [`super::rebuild`], which reads lines only). Commands are encoded and responses decoded
//! whole with imap-codec (a literal in a response, a header block in a FETCH, is read in
//! full: these responses are levee's own, and bounded).

use std::net::SocketAddr;
use std::time::Duration;

use imap_codec::decode::{Decoder, GreetingDecodeError, ResponseDecodeError};
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::response::{Response, Status, StatusKind};
use imap_codec::{CommandCodec, GreetingCodec, ResponseCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::Credentials;

/// Largest single response levee reads on its own connections.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Responses read while waiting for one completion before giving up.
const MAX_RESPONSES: usize = 1_000_000;

/// Why a connection or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server sent something levee cannot read: {0}")]
    Protocol(String),
    /// A tagged NO or BAD, with the server's text.
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One connection, greeted, with a tag counter.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    next: u32,
}

impl Conn {
    /// Connects and reads the greeting, which must be OK (not PREAUTH or BYE).
    pub async fn open(addr: SocketAddr) -> Result<Conn, ConnError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(4096),
            next: 0,
        };
        loop {
            match GreetingCodec::default().decode(&conn.buf) {
                Ok((rest, greeting)) => {
                    if !matches!(
                        greeting.kind,
                        imap_codec::imap_types::response::GreetingKind::Ok
                    ) {
                        return Err(ConnError::Refused(format!("greeting: {:?}", greeting.kind)));
                    }
                    let used = conn.buf.len() - rest.len();
                    conn.buf.drain(..used);
                    return Ok(conn);
                }
                Err(GreetingDecodeError::Incomplete) => conn.fill().await?,
                Err(GreetingDecodeError::Failed) => {
                    return Err(ConnError::Protocol("greeting".into()));
                }
            }
        }
    }

    /// LOGIN with kept credentials (a password needing a literal is sent as one).
    pub async fn login(&mut self, login: &Credentials) -> Result<(), ConnError> {
        let body = CommandBody::login(login.user.as_str(), login.password.as_str())
            .map_err(|_| ConnError::Protocol("the kept login cannot be encoded".into()))?;
        self.run(body).await.map(drop)
    }

    /// Sends a command, waiting for "+" before each synchronizing literal; returns its tag.
    pub async fn send(&mut self, body: CommandBody<'_>) -> Result<String, ConnError> {
        self.next += 1;
        let tag = format!("levee{}", self.next);
        let command =
            Command::new(tag.as_str(), body).map_err(|e| ConnError::Protocol(format!("{e:?}")))?;
        for fragment in CommandCodec::default().encode(&command) {
            let (data, sync) = match fragment {
                Fragment::Line { data } => (data, false),
                Fragment::Literal { data, mode } => (data, mode == LiteralMode::Sync),
            };
            if sync {
                match self.response().await? {
                    Response::CommandContinuationRequest(_) => {}
                    other => return Err(ConnError::Refused(format!("{other:?}"))),
                }
            }
            self.stream.write_all(&data).await?;
        }
        Ok(tag)
    }

    /// Sends raw bytes (`DONE` ending an IDLE).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        Ok(self.stream.write_all(bytes).await?)
    }

    /// Sends a command and reads up to its completion; returns every response before it.
    /// A tagged NO or BAD is [`ConnError::Refused`].
    pub async fn run(
        &mut self,
        body: CommandBody<'_>,
    ) -> Result<Vec<Response<'static>>, ConnError> {
        let tag = self.send(body).await?;
        self.complete(&tag).await
    }

    /// Reads up to the completion of `tag`.
    pub async fn complete(&mut self, tag: &str) -> Result<Vec<Response<'static>>, ConnError> {
        let mut before = Vec::new();
        for _ in 0..MAX_RESPONSES {
            match self.response().await? {
                Response::Status(Status::Tagged(tagged)) if tagged.tag.inner() == tag => {
                    if tagged.body.kind == StatusKind::Ok {
                        return Ok(before);
                    }
                    return Err(ConnError::Refused(format!(
                        "{:?} {}",
                        tagged.body.kind,
                        tagged.body.text.inner()
                    )));
                }
                Response::Status(Status::Bye(bye)) => {
                    return Err(ConnError::Refused(format!("BYE {}", bye.text.inner())));
                }
                other => before.push(other),
            }
        }
        Err(ConnError::Protocol("too many responses".into()))
    }

    /// The next response, whole.
    pub async fn response(&mut self) -> Result<Response<'static>, ConnError> {
        loop {
            match ResponseCodec::default().decode(&self.buf) {
                Ok((rest, response)) => {
                    let response = response.into_static();
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    return Ok(response);
                }
                Err(ResponseDecodeError::Incomplete | ResponseDecodeError::LiteralFound { .. }) => {
                    self.fill().await?;
                }
                Err(ResponseDecodeError::Failed) => {
                    // A response imap-codec does not know: skip its line, keep reading.
                    let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                        self.fill().await?;
                        continue;
                    };
                    let line: Vec<u8> = self.buf.drain(..=end).collect();
                    tracing::debug!(
                        line = %String::from_utf8_lossy(&line).trim_end(),
                        "skipped a response levee cannot decode"
                    );
                }
            }
        }
    }

    /// The next response, or `None` when nothing arrives within `wait`.
    pub async fn response_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Response<'static>>, ConnError> {
        match tokio::time::timeout(wait, self.response()).await {
            Ok(response) => response.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The stream and the bytes already read from it but not decoded.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        if self.buf.len() > MAX_RESPONSE {
            return Err(ConnError::Protocol(format!(
                "a response over {MAX_RESPONSE} bytes"
            )));
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }
}

/// Runs `work` within `limit`.
pub async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(ConnError::Timeout(limit)))
}
