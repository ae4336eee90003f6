//! Load and observation for benchmarks, in Rust so that timestamps are exact: a blocking SMTP
//! client that returns the journal seq of every 250 (levee answers `queued as L<seq>`), a
//! steady-rate load spread over several sessions, and a keep-alive HTTP/1.1 client for a
//! daemon's `/metrics` and `/status`.
//!
//! Every 250 is timed twice: on the monotonic clock (durations inside this process) and on
//! the wall clock (to line it up with timestamps other processes wrote).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn broken(what: String) -> io::Error {
    io::Error::other(what)
}

/// One SMTP (or LMTP) session with connection reuse (no pipelining, no TLS).
#[derive(Debug)]
pub struct SmtpSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpSession {
    /// Connects, reads the greeting and says EHLO.
    pub fn connect(addr: SocketAddr) -> io::Result<SmtpSession> {
        SmtpSession::open(addr, "EHLO")
    }

    /// Connects to an LMTP server (LHLO); use [`SmtpSession::transfer`] with one recipient.
    pub fn connect_lmtp(addr: SocketAddr) -> io::Result<SmtpSession> {
        SmtpSession::open(addr, "LHLO")
    }

    fn open(addr: SocketAddr, hello: &str) -> io::Result<SmtpSession> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut session = SmtpSession {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        session.expect(220, "greeting")?;
        session.command(format!("{hello} bench.example.org\r\n").as_bytes(), 250)?;
        Ok(session)
    }

    /// One transaction to one recipient; returns the final reply and when the final dot
    /// was written. `body` must be CRLF text with no line starting with a dot.
    pub fn transfer(&mut self, from: &str, to: &str, body: &[u8]) -> io::Result<(String, Instant)> {
        self.command(format!("MAIL FROM:<{from}>\r\n").as_bytes(), 250)?;
        self.command(format!("RCPT TO:<{to}>\r\n").as_bytes(), 250)?;
        self.command(b"DATA\r\n", 354)?;
        self.writer.write_all(body)?;
        self.writer.write_all(b".\r\n")?;
        let dot = Instant::now();
        Ok((self.expect(250, "end of data")?, dot))
    }

    /// [`SmtpSession::transfer`] through levee: returns the journal seq from the 250.
    pub fn send(&mut self, from: &str, to: &str, body: &[u8]) -> io::Result<(u64, Instant)> {
        let (text, dot) = self.transfer(from, to, body)?;
        let seq = text
            .split_once("queued as L")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| broken(format!("no journal seq in the 250: {text:?}")))?;
        Ok((seq, dot))
    }

    fn command(&mut self, line: &[u8], code: u16) -> io::Result<String> {
        self.writer.write_all(line)?;
        let what = String::from_utf8_lossy(line).trim().to_string();
        self.expect(code, &what)
    }

    /// Reads one (multi-line) reply; an unexpected code is an error naming `what`.
    fn expect(&mut self, code: u16, what: &str) -> io::Result<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(broken(format!("{what}: connection closed")));
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if !text.starts_with(&code.to_string()) {
            return Err(broken(format!("{what}: expected {code}, got {text:?}")));
        }
        Ok(text)
    }
}

/// A CRLF message of exactly `size` bytes (at least about 200) with Message-ID `<id>`.
pub fn message(id: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <bench@example.org>\r\nTo: <alice@example.test>\r\nSubject: bench {id}\r\n\
         Message-ID: <{id}>\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    while m.len() + 2 < size {
        let room = (size - m.len() - 2).min(78);
        m.extend(std::iter::repeat_n(b'x', room));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Time since the Unix epoch (`CLOCK_REALTIME`, the clock log timestamps use).
pub fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// One acknowledged message of [`steady`].
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub seq: u64,
    /// When it was due by the schedule, and when MAIL FROM actually went out.
    pub due: Instant,
    pub started: Instant,
    /// The final dot written, and the 250 read.
    pub dot: Instant,
    pub acked: Instant,
    /// The 250 read, on the wall clock (to compare with other processes' timestamps).
    pub acked_wall: Duration,
}

/// Sends `rate` messages per second for `duration`, round-robin over `sessions` reused
/// connections (message i is due at start + i / rate; a session that falls behind sends at
/// once). Any refusal or broken connection fails the whole load.
pub fn steady(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    sessions: usize,
    size: usize,
    prefix: &str,
) -> io::Result<Vec<Acked>> {
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let mut connected = Vec::new();
    for _ in 0..sessions {
        connected.push(SmtpSession::connect(addr)?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(j, mut session)| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || -> io::Result<Vec<Acked>> {
                let mut out = Vec::new();
                for i in (j..total).step_by(sessions) {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = message(&format!("{prefix}-{i}@bench.example.org"), size);
                    let started = Instant::now();
                    let (seq, dot) =
                        session.send("bench@example.org", "alice@example.test", &body)?;
                    let (acked, acked_wall) = (Instant::now(), wall_clock());
                    out.push(Acked {
                        seq,
                        due,
                        started,
                        dot,
                        acked,
                        acked_wall,
                    });
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for thread in threads {
        let acked = thread
            .join()
            .map_err(|_| broken("load thread panicked".into()))??;
        all.extend(acked);
    }
    all.sort_by_key(|a| a.seq);
    Ok(all)
}

/// A keep-alive HTTP/1.1 connection to a levee metrics listener (`/metrics`, `/status`).
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient { addr, conn: None }
    }

    /// `GET path`; reconnects once if the kept-alive connection was closed.
    pub fn get(&mut self, path: &str) -> io::Result<String> {
        match self.try_get(path) {
            Ok(body) => Ok(body),
            Err(_) => {
                self.conn = None;
                self.try_get(path)
            }
        }
    }

    fn try_get(&mut self, path: &str) -> io::Result<String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let request = format!("GET {path} HTTP/1.1\r\nHost: levee\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        conn.read_line(&mut status)?;
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line)? == 0 {
                return Err(broken(format!("{path}: connection closed in headers")));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                conn.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| broken(format!("{path}: bad chunk size {size:?}")))?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            let length = length.ok_or_else(|| broken(format!("{path}: no Content-Length")))?;
            body.resize(length, 0);
            conn.read_exact(&mut body)?;
        }
        if !status.contains(" 200") {
            return Err(broken(format!("{path}: {}", status.trim())));
        }
        String::from_utf8(body).map_err(|_| broken(format!("{path}: body is not UTF-8")))
    }

    /// `/status` parsed.
    pub fn status(&mut self) -> io::Result<serde_json::Value> {
        let body = self.get("/status")?;
        serde_json::from_str(&body).map_err(|err| broken(format!("/status: {err}: {body}")))
    }

    /// The unlabelled sample `name` in `/metrics`.
    pub fn metric(&mut self, name: &str) -> io::Result<Option<f64>> {
        Ok(crate::metric_value(&self.get("/metrics")?, name))
    }
}
