//! The replication link between the sites, with a hand on it: a TCP relay from a local
//! port to the replica daemon's stream listener that can cut every connection (and refuse
//! new ones for a while) or stall them (bytes stop flowing both ways, sockets stay open).
//! TLS passes through untouched: the primary still verifies the replica's certificate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// Connections stay up, nothing moves.
    Stalled,
    /// Every connection is closed and new ones are dropped at once.
    Cut,
}

/// A running relay; dropped with the runtime that serves it.
#[derive(Debug)]
pub struct Link {
    pub addr: SocketAddr,
    flow: watch::Sender<Flow>,
}

impl Link {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (flow, watcher) = watch::channel(Flow::Open);
        tokio::spawn(accept(listener, target, watcher));
        Ok(Link { addr, flow })
    }

    /// Closes every connection and refuses new ones for `outage`.
    pub async fn cut(&self, outage: Duration) {
        self.flow.send_replace(Flow::Cut);
        tokio::time::sleep(outage).await;
        self.flow.send_replace(Flow::Open);
    }

    /// Stops all traffic for `outage` without closing anything.
    pub async fn stall(&self, outage: Duration) {
        self.flow.send_replace(Flow::Stalled);
        tokio::time::sleep(outage).await;
        self.flow.send_replace(Flow::Open);
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, flow: watch::Receiver<Flow>) {
    while let Ok((client, _)) = listener.accept().await {
        if *flow.borrow() == Flow::Cut {
            drop(client);
            continue;
        }
        let flow = flow.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending (EOF, error or a cut) ends both.
            tokio::select! {
                _ = pump(client_read, server_write, flow.clone()) => {}
                _ = pump(server_read, client_write, flow) => {}
            }
        });
    }
}

/// Copies `from` to `to` while the flow is open; waits while it is stalled; returns when
/// either side closes or the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: watch::Receiver<Flow>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wait out a stall before reading, so that nothing is read that cannot be passed on.
        if !wait_open(&mut flow).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = flow.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // A stall that begins now holds these bytes until it ends; a cut drops them.
        if !wait_open(&mut flow).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while the link is stalled; false once it is cut (or the relay is gone).
async fn wait_open(flow: &mut watch::Receiver<Flow>) -> bool {
    loop {
        let now = *flow.borrow_and_update();
        match now {
            Flow::Open => return true,
            Flow::Cut => return false,
            Flow::Stalled => {
                if flow.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}
