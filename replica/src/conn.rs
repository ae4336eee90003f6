//! A framed replication connection: length-delimited frames over any stream (TLS in
//! production, in-memory in tests), with a bound on every frame and every wait.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::frame::{self, Frame, FrameError, MAX_FRAME_BYTES};

/// Why a replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer silent for {0:?}")]
    Timeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

/// Frames in both directions over `S`.
#[derive(Debug)]
pub struct FrameConn<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameConn<S> {
    pub fn new(stream: S) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_BYTES)
            .new_codec();
        FrameConn {
            framed: Framed::new(stream, codec),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ConnError> {
        let bytes = frame::encode(frame)?;
        self.framed.send(bytes::Bytes::from(bytes)).await?;
        Ok(())
    }

    /// The next frame, waiting at most `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Result<Frame, ConnError> {
        match tokio::time::timeout(limit, self.framed.next()).await {
            Err(_) => Err(ConnError::Timeout(limit)),
            Ok(None) => Err(ConnError::Closed),
            Ok(Some(Err(err))) if err.kind() == std::io::ErrorKind::InvalidData => {
                // The codec's own refusal: a length prefix over the limit.
                Err(ConnError::Frame(FrameError::TooLarge))
            }
            // A peer that vanishes (no TLS close_notify) has simply closed the connection;
            // whether that lost anything is decided by what was acknowledged, not here.
            Ok(Some(Err(err))) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(ConnError::Closed)
            }
            Ok(Some(Err(err))) => Err(err.into()),
            Ok(Some(Ok(bytes))) => Ok(frame::decode(&bytes)?),
        }
    }

    pub fn into_inner(self) -> S {
        self.framed.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_cross_a_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut a, mut b) = (FrameConn::new(a), FrameConn::new(b));
        a.send(&Frame::Ack { seq: 9 }).await.unwrap();
        let got = b.recv(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got, Frame::Ack { seq: 9 });
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused() {
        let (mut raw, b) = tokio::io::duplex(1 << 16);
        let mut b = FrameConn::new(b);
        raw.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(matches!(
            b.recv(Duration::from_secs(1)).await,
            Err(ConnError::Frame(FrameError::TooLarge))
        ));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let (mut raw, b) = tokio::io::duplex(1 << 16);
        let mut b = FrameConn::new(b);
        raw.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
        assert!(matches!(
            b.recv(Duration::from_secs(1)).await,
            Err(ConnError::Frame(_))
        ));
        raw.write_all(&[0, 0, 0, 50, 0, 1]).await.unwrap();
        drop(raw);
        assert!(b.recv(Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (_a, b) = tokio::io::duplex(64);
        let mut b = FrameConn::new(b);
        assert!(matches!(
            b.recv(Duration::from_millis(50)).await,
            Err(ConnError::Timeout(_))
        ));
    }
}
