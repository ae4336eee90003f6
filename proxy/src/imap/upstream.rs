//! The server-bound side of a running session: what waits to go to the IMAP server
//! (literals held back until the server's go-ahead), written as far as the socket takes
//! it without waiting, and the connection itself, absent while the session hibernates.

use std::collections::VecDeque;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::framing::ClientMessage;
use super::session::{Out, Session};

impl Session {
    /// Writes what the upstream outbox holds as far as the socket takes it without waiting,
    /// saving a turn of the session's loop per command; errors are left to that loop.
    pub(super) fn write_upstream_now(&mut self) {
        while let (Some(up_write), Some(Out::Bytes(bytes, sent))) =
            (&self.up_write, self.up_out.front())
        {
            match up_write.try_write(&bytes[*sent..]) {
                Ok(n) if n > 0 => self.advance_up(n),
                _ => return,
            }
        }
    }

    pub(super) fn advance_up(&mut self, mut n: usize) {
        self.up_out_bytes = self.up_out_bytes.saturating_sub(n);
        while n > 0 {
            let Some(Out::Bytes(bytes, sent)) = self.up_out.front_mut() else {
                return;
            };
            let take = n.min(bytes.len() - *sent);
            *sent += take;
            n -= take;
            if *sent == bytes.len() {
                self.up_out.pop_front();
            }
        }
    }

    pub(super) fn send_upstream(&mut self, message: ClientMessage) {
        self.up_out_bytes += message.bytes.len();
        let mut start = 0;
        for point in message.sync_points {
            self.up_out
                .push_back(Out::Bytes(message.bytes[start..point].to_vec(), 0));
            self.up_out.push_back(Out::GoAhead);
            start = point;
        }
        self.up_out
            .push_back(Out::Bytes(message.bytes[start..].to_vec(), 0));
    }
}

/// Writes to the server's connection; never finishes while there is none.
pub(super) async fn write_up(
    up: &mut Option<OwnedWriteHalf>,
    bytes: &[u8],
) -> std::io::Result<usize> {
    match up {
        Some(up) => up.write(bytes).await,
        None => std::future::pending().await,
    }
}

/// Reads from the server's connection; never finishes while there is none.
pub(super) async fn read_up(
    up: &mut Option<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    match up {
        Some(up) => up.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

pub(super) fn front_bytes(out: &VecDeque<Out>) -> &[u8] {
    match out.front() {
        Some(Out::Bytes(bytes, sent)) => &bytes[*sent..],
        _ => &[],
    }
}
