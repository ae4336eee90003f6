//! The client-bound side of a running session: what waits to be written to the client,
//! written as far as the socket takes it without waiting, and the read buffers' sizing.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::session::Next;

/// Reads take up to this much at once while data is flowing...
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// ...and an idle session waits with this much, each way.
pub(super) const IDLE_READ: usize = 512;

/// The client-bound side of a running session.
pub(super) struct Pump {
    pub(super) client_out: Vec<u8>,
    pub(super) client_sent: usize,
    /// Stop once the client outbox is flushed.
    pub(super) closing: bool,
    pub(super) next: Next,
}

impl Pump {
    pub(super) fn say(&mut self, bytes: &[u8]) {
        if self.client_sent > 0 && self.client_sent == self.client_out.len() {
            self.client_out.clear();
            self.client_sent = 0;
        }
        self.client_out.extend_from_slice(bytes);
    }

    /// Writes the client's pending bytes as far as the stream takes them without waiting;
    /// errors and the rest are left to the session's loop.
    pub(super) fn write_now<W: AsyncWrite + Unpin>(&mut self, client: &mut W) {
        while self.client_sent < self.client_out.len() {
            let write = std::pin::pin!(client.write(&self.client_out[self.client_sent..]));
            match poll_once(write) {
                Some(Ok(n)) if n > 0 => self.sent(n),
                _ => return,
            }
        }
    }

    pub(super) fn sent(&mut self, n: usize) {
        self.client_sent += n;
        if self.client_sent == self.client_out.len() {
            self.client_out.clear();
            self.client_sent = 0;
            if self.client_out.capacity() > READ_CHUNK {
                // A large response went out; an idle session keeps no large buffer.
                self.client_out = Vec::new();
            }
        }
    }
}

/// Empties a read buffer and sizes it for the next read: a read that filled it means data
/// is flowing (read more at once); a short one means the session is quiet again, and an
/// idle session should not sit on 16 KiB each way.
pub(super) fn resize_for_next(buf: &mut Vec<u8>, n: usize) {
    buf.clear();
    if n >= buf.capacity() && buf.capacity() < READ_CHUNK {
        *buf = Vec::with_capacity(READ_CHUNK);
    } else if n < IDLE_READ && buf.capacity() > IDLE_READ {
        *buf = Vec::with_capacity(IDLE_READ);
    }
}

/// Polls `future` once; `Some` if it finished right away. A pending future is dropped, and
/// the caller's event loop polls the same resource again with its own waker.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}
