//! Health checks of one backend site: its SMTP server answers a greeting and NOOP, its IMAP
//! server a greeting and NOOP, each within a time limit. Nothing is logged in.

use std::net::SocketAddr;
use std::time::Duration;

use levee_config::Backend as Site;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest line read from a server under check.
const MAX_LINE: usize = 4096;

/// Checks every service of `site`; `Err` names the first that failed.
pub async fn check_site(site: &Site, limit: Duration) -> Result<(), String> {
    let smtp = tokio::time::timeout(limit, smtp(site.smtp));
    let imap = async {
        match site.imap {
            Some(addr) => tokio::time::timeout(limit, imap(addr)).await,
            None => Ok(Ok(())),
        }
    };
    let (smtp, imap) = tokio::join!(smtp, imap);
    let verdict = |name: &str, addr: SocketAddr, result: Result<Result<(), String>, _>| match result
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("{name} {addr}: {err}")),
        Err(_) => Err(format!("{name} {addr}: no answer within {limit:?}")),
    };
    verdict("SMTP", site.smtp, smtp)?;
    if let Some(addr) = site.imap {
        verdict("IMAP", addr, imap)?;
    }
    Ok(())
}

/// `220` greeting, `NOOP` answered with `250`, then QUIT.
async fn smtp(addr: SocketAddr) -> Result<(), String> {
    let mut conn = Conn::open(addr).await?;
    let greeting = conn.smtp_reply().await?;
    if !greeting.starts_with("220") {
        return Err(format!("greeting {}", greeting.trim_end()));
    }
    conn.send(b"NOOP\r\n").await?;
    let noop = conn.smtp_reply().await?;
    if !noop.starts_with("250") {
        return Err(format!("NOOP answered {}", noop.trim_end()));
    }
    let _ = conn.send(b"QUIT\r\n").await;
    Ok(())
}

/// `* OK` greeting, `NOOP` completed with OK, then LOGOUT.
async fn imap(addr: SocketAddr) -> Result<(), String> {
    let mut conn = Conn::open(addr).await?;
    let greeting = conn.line().await?;
    if !greeting.starts_with("* OK") {
        return Err(format!("greeting {}", greeting.trim_end()));
    }
    conn.send(b"h1 NOOP\r\n").await?;
    loop {
        let line = conn.line().await?;
        if let Some(status) = line.strip_prefix("h1 ") {
            if !status.starts_with("OK") {
                return Err(format!("NOOP answered {}", line.trim_end()));
            }
            break;
        }
    }
    let _ = conn.send(b"h2 LOGOUT\r\n").await;
    Ok(())
}

struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 || !line.ends_with(b"\n") {
            return Err("connection closed or line too long".into());
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// The last line of a (possibly multi-line) SMTP reply.
    async fn smtp_reply(&mut self) -> Result<String, String> {
        for _ in 0..64 {
            let line = self.line().await?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
        Err("reply too long".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(script: &'static [u8], answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(script).await;
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
                let _ = stream.read(&mut buf).await;
            }
        });
        addr
    }

    fn site(smtp: SocketAddr, imap: Option<SocketAddr>) -> Site {
        Site {
            smtp,
            submission: None,
            imap,
            master_user: None,
            master_password_file: None,
        }
    }

    #[tokio::test]
    async fn healthy_servers_pass_and_each_fault_is_named() {
        let limit = Duration::from_millis(500);
        let smtp_ok = server(b"220-mx\r\n220 mx ESMTP\r\n", b"250 ok\r\n").await;
        let imap_ok = server(b"* OK ready\r\n", b"* 1 EXISTS\r\nh1 OK done\r\n").await;
        assert_eq!(
            check_site(&site(smtp_ok, Some(imap_ok)), limit).await,
            Ok(())
        );

        let smtp_busy = server(b"421 busy\r\n", b"").await;
        let err = check_site(&site(smtp_busy, None), limit).await.unwrap_err();
        assert!(err.starts_with("SMTP") && err.contains("421"), "{err}");

        let imap_bye = server(b"* BYE shutting down\r\n", b"").await;
        let err = check_site(&site(smtp_ok, Some(imap_bye)), limit)
            .await
            .unwrap_err();
        assert!(err.starts_with("IMAP") && err.contains("BYE"), "{err}");

        // Accepts, then never says anything.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let err = check_site(&site(silent_addr, None), limit)
            .await
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        drop(silent);
        let err = check_site(&site(silent_addr, None), limit)
            .await
            .unwrap_err();
        assert!(err.contains("connect"), "{err}");
    }
}
