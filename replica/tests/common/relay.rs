//! A TCP relay for the link tests: cut, refuse, freeze.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP relay between a shipper and a receiver that can cut the link (after a number of
/// bytes toward the receiver, or on demand), refuse connections while down, and freeze
/// (keep connections open but forward nothing, like a black hole).
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    frozen: tokio::sync::watch::Sender<bool>,
    forwarded: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    pub accepted: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept_task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen_tx, _) = tokio::sync::watch::channel(false);
        let up = Arc::new(AtomicBool::new(true));
        let forwarded: Arc<AtomicU64> = Arc::default();
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let cuts: Arc<AtomicU64> = Arc::default();
        let accepted: Arc<AtomicU64> = Arc::default();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let mut relay = Relay {
            addr,
            up: up.clone(),
            frozen: frozen_tx.clone(),
            forwarded: forwarded.clone(),
            cut_at: cut_at.clone(),
            cuts: cuts.clone(),
            accepted: accepted.clone(),
            conns: conns.clone(),
            accept_task: tokio::spawn(async {}),
        };
        let frozen = frozen_tx;
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (up, forwarded, cut_at, cuts) =
                    (up.clone(), forwarded.clone(), cut_at.clone(), cuts.clone());
                let (f1, f2) = (frozen.subscribe(), frozen.subscribe());
                let task = tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let cut = |n: u64| {
                        let total = forwarded.fetch_add(n, Ordering::SeqCst) + n;
                        if total >= cut_at.load(Ordering::SeqCst) {
                            cut_at.store(u64::MAX, Ordering::SeqCst);
                            up.store(false, Ordering::SeqCst);
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return true;
                        }
                        false
                    };
                    tokio::select! {
                        _ = pump(cr, sw, f1, cut) => {}
                        _ = pump(sr, cw, f2, |_| false) => {}
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        relay.accept_task = accept_task;
        relay
    }

    /// Cuts the link once `bytes` more have gone toward the receiver; connections are
    /// refused until [`Relay::restore`].
    pub fn cut_after(&self, bytes: u64) {
        let at = self.forwarded.load(Ordering::SeqCst) + bytes;
        self.cut_at.store(at, Ordering::SeqCst);
    }

    /// Cuts every connection now and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.fetch_add(1, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept_task.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Copies `from` to `to` until either ends, `cut` says to stop, or forever while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
    cut: impl Fn(u64) -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow() {
            // Frozen while reading: swallow it, as a black hole would.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() || cut(n as u64) {
            return;
        }
    }
}
