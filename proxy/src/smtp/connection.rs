//! The client side of an SMTP session: one socket, one read buffer, one write buffer.
//!
//! `Connection` turns bytes into command lines and message bodies and enforces every bound
//! on them (line length, message size, idle and data timeouts). Replies are buffered and
//! written when the session next needs input and none is buffered, which is what makes
//! PIPELINING cheap: a burst of pipelined commands gets one burst of replies.

use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::reply::Reply;

const READ_CHUNK: usize = 16 * 1024;

/// What the client sent where a command was expected.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, CRLF (or bare LF) included.
    Complete(Vec<u8>),
    /// The line exceeded the limit; its bytes up to the next LF were discarded.
    TooLong,
}

/// A message body read after DATA.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// The un-dot-stuffed content, exactly as the client meant it.
    Complete(Vec<u8>),
    /// Larger than the limit: read to its end and discarded.
    TooBig,
}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("client closed the connection")]
    Closed,
    #[error("client idle for {0:?}")]
    Timeout(Duration),
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Socket plus buffers of one client session. Generic so that the same session code runs
/// over TCP, TLS and in-memory streams.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// Set while discarding the rest of an over-long line.
    skipping: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self::with_buffered(stream, Vec::new())
    }

    /// A connection whose first input bytes were already read elsewhere.
    pub fn with_buffered(stream: S, rbuf: Vec<u8>) -> Self {
        Connection {
            stream,
            rbuf,
            rpos: 0,
            wbuf: Vec::with_capacity(512),
            skipping: false,
        }
    }

    /// Queues a reply; it goes out with the next flush.
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wbuf);
    }

    /// Queues raw reply bytes (an EHLO reply built elsewhere).
    pub fn reply_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Gives back the stream once replies are flushed, for the STARTTLS upgrade.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Reads the next command line of at most `max` bytes.
    pub async fn read_line(&mut self, max: usize, idle: Duration) -> Result<Line, ConnError> {
        // The whole line must arrive within `idle`, not each of its bytes: a client that
        // trickles a byte now and then (slowloris) holds its slot no longer than one that
        // sends nothing.
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let pending = &self.rbuf[self.rpos..];
            if let Some(pos) = memchr(b'\n', pending) {
                let line = pending[..=pos].to_vec();
                self.rpos += pos + 1;
                if std::mem::take(&mut self.skipping) || line.len() > max {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line));
            }
            if pending.len() > max || self.skipping {
                // Keep nothing of an over-long line but remember to drop its tail.
                self.skipping = true;
                self.rpos = self.rbuf.len();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout(idle));
            }
            self.fill(left).await.map_err(|e| match e {
                ConnError::Timeout(_) => ConnError::Timeout(idle),
                e => e,
            })?;
        }
    }

    /// Reads a DATA body up to the terminating `CRLF.CRLF`, undoing dot-stuffing.
    pub async fn read_body(&mut self, max: u64, idle: Duration) -> Result<Body, ConnError> {
        let mut receiver = DataReceiver::new();
        let mut body = Vec::with_capacity(8 * 1024);
        loop {
            let mut iter = self.rbuf[self.rpos..].iter();
            let before = iter.len();
            let done = receiver.ingest(&mut iter, &mut body);
            self.rpos += before - iter.len();
            if body.len() as u64 > max {
                if done {
                    return Ok(Body::TooBig);
                }
                return self.discard_body(&receiver, idle).await;
            }
            if done {
                return Ok(Body::Complete(body));
            }
            self.fill(idle).await?;
        }
    }

    async fn discard_body(
        &mut self,
        receiver: &DataReceiver,
        idle: Duration,
    ) -> Result<Body, ConnError> {
        let mut dummy = DummyDataReceiver::new_data(receiver);
        loop {
            let mut iter = self.rbuf[self.rpos..].iter();
            let before = iter.len();
            let done = dummy.ingest(&mut iter);
            self.rpos += before - iter.len();
            if done {
                return Ok(Body::TooBig);
            }
            self.fill(idle).await?;
        }
    }

    /// Flushes pending replies, then reads more input.
    async fn fill(&mut self, idle: Duration) -> Result<(), ConnError> {
        self.flush().await?;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        // read_buf fills spare capacity: no zeroing of a fresh chunk on every read.
        self.rbuf.reserve(READ_CHUNK);
        let n = match timeout(idle, self.stream.read_buf(&mut self.rbuf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(ConnError::Timeout(idle)),
        };
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn lines_split_across_reads_are_joined() {
        let (mut client, server) = duplex(64);
        let mut conn = Connection::new(server);
        tokio::spawn(async move {
            client.write_all(b"EHLO exa").await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(b"mple.org\r\nNOOP\r\n").await.unwrap();
        });
        assert_eq!(
            conn.read_line(512, IDLE).await.unwrap(),
            Line::Complete(b"EHLO example.org\r\n".to_vec())
        );
        assert_eq!(
            conn.read_line(512, IDLE).await.unwrap(),
            Line::Complete(b"NOOP\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn overlong_line_is_reported_once_and_skipped() {
        let (mut client, server) = duplex(1 << 16);
        let mut conn = Connection::new(server);
        let mut input = vec![b'A'; 40_000];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        client.write_all(&input).await.unwrap();
        assert_eq!(conn.read_line(512, IDLE).await.unwrap(), Line::TooLong);
        assert_eq!(
            conn.read_line(512, IDLE).await.unwrap(),
            Line::Complete(b"QUIT\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn body_is_unstuffed_and_bounded() {
        let (mut client, server) = duplex(1 << 16);
        let mut conn = Connection::new(server);
        client
            .write_all(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        assert_eq!(
            conn.read_body(1024, IDLE).await.unwrap(),
            Body::Complete(b"Subject: x\r\n\r\n.leading dot\r\n".to_vec())
        );
        assert_eq!(
            conn.read_line(512, IDLE).await.unwrap(),
            Line::Complete(b"QUIT\r\n".to_vec())
        );

        let mut big = vec![b'x'; 5000];
        big.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        client.write_all(&big).await.unwrap();
        assert_eq!(conn.read_body(1024, IDLE).await.unwrap(), Body::TooBig);
        assert_eq!(
            conn.read_line(512, IDLE).await.unwrap(),
            Line::Complete(b"NOOP\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn stalled_client_times_out() {
        tokio::time::pause();
        let (_client, server) = duplex(64);
        let mut conn = Connection::new(server);
        let err = conn
            .read_line(512, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnError::Timeout(_)));
    }

    #[tokio::test]
    async fn vanished_client_is_closed() {
        let (client, server) = duplex(64);
        drop(client);
        let mut conn = Connection::new(server);
        assert!(matches!(
            conn.read_body(100, IDLE).await.unwrap_err(),
            ConnError::Closed
        ));
    }
}
