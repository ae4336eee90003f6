//! Floods and slow clients against levee in front of real Postfix and Dovecot: one address
//! gets at most its share of connections (the rest are refused at once, clearly), other
//! addresses are served meanwhile, and a client that trickles bytes is cut at its deadline
//! however it trickles. Also: the TLS certificate is replaced on SIGHUP without dropping
//! sessions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use levee_tests::imap_load::{ImapClient, Security};
use levee_tests::{LeveeMode, Site};

/// A blocking connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        socket.connect(addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

fn first_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line
}

fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// The flooding address; nothing else (the harness's readiness checks, levee's own
/// probes) connects from it.
const FLOOD: &str = "127.0.0.5";

fn limited_site() -> Site {
    let mut site = Site::start("floods");
    site.levee.reconfigure(|text| {
        text.replacen("[smtp]\n", "[smtp]\nmax_connections_per_ip = 20\n", 1)
            .replacen("[imap]\n", "[imap]\nmax_connections_per_ip = 20\n", 1)
    });
    site
}

#[test]
fn one_address_gets_its_share_and_the_others_are_served() {
    let site = limited_site();
    let (smtp, imap) = (site.levee.ports.relay, site.levee.ports.imap);

    let held: Vec<TcpStream> = (0..20).map(|_| connect_from(FLOOD, smtp)).collect();
    for (n, stream) in held.iter().enumerate() {
        let greeting = first_line(stream);
        assert!(greeting.starts_with("220 "), "connection {n}: {greeting:?}");
    }
    let mut over = connect_from(FLOOD, smtp);
    let refusal = first_line(&over);
    assert!(
        refusal.starts_with("421 4.7.0 ") && refusal.contains("Too many connections"),
        "the 21st SMTP connection from one address: {refusal:?}"
    );
    assert!(closed(&mut over));

    let imap_held: Vec<TcpStream> = (0..20).map(|_| connect_from(FLOOD, imap)).collect();
    for stream in &imap_held {
        assert!(first_line(stream).starts_with("* OK"));
    }
    let mut over = connect_from(FLOOD, imap);
    let refusal = first_line(&over);
    assert!(
        refusal.starts_with("* BYE [UNAVAILABLE] Too many connections"),
        "the 21st IMAP connection: {refusal:?}"
    );
    assert!(closed(&mut over));

    // Another address is served in full meanwhile: a message goes through.
    let other = connect_from("127.0.0.2", smtp);
    let mut reader = BufReader::new(other.try_clone().unwrap());
    let mut writer = other;
    let mut reply = |line: &str, writer: &mut TcpStream| -> String {
        if !line.is_empty() {
            writer.write_all(line.as_bytes()).unwrap();
        }
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        }
    };
    assert!(reply("", &mut writer).starts_with("220"));
    assert!(reply("EHLO other.test\r\n", &mut writer).starts_with("250"));
    assert!(reply("MAIL FROM:<bob@example.org>\r\n", &mut writer).starts_with("250"));
    assert!(reply("RCPT TO:<alice@example.test>\r\n", &mut writer).starts_with("250"));
    assert!(reply("DATA\r\n", &mut writer).starts_with("354"));
    let body = "Message-ID: <other-address@example.org>\r\nSubject: x\r\n\r\nserved\r\n.\r\n";
    assert!(reply(body, &mut writer).starts_with("250"));
    site.wait_for_messages("alice", &["<other-address@example.org>".into()], 30);

    // A place given back is taken again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = connect_from(FLOOD, smtp);
        if first_line(&again).starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "places never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = levee_tests::metric_value(
        &site.levee.metrics(),
        "levee_connections_refused_total{proto=\"smtp\",reason=\"per_ip\"}",
    );
    assert!(refused >= Some(1.0), "refusals counted: {refused:?}");
    drop(imap_held);
}

/// Sends `prefix` then one byte every 400 ms (never a line end) until levee closes the
/// connection or 40 s pass; returns what levee said last and how many bytes went out.
fn trickle(addr: SocketAddr, from: &str, prefix: &[u8]) -> (String, usize) {
    let mut stream = connect_from(from, addr);
    let greeting = first_line(&stream);
    assert!(!greeting.is_empty(), "no greeting");
    stream.write_all(prefix).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let started = Instant::now();
    let mut sent = prefix.len();
    let mut heard = Vec::new();
    while started.elapsed() < Duration::from_secs(40) {
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&heard).into_owned(), sent),
            Ok(n) => heard.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (String::from_utf8_lossy(&heard).into_owned(), sent),
        }
        if stream.write_all(b"a").is_err() {
            return (String::from_utf8_lossy(&heard).into_owned(), sent);
        }
        sent += 1;
    }
    panic!("a client trickling bytes was never cut off; levee said {heard:?}");
}

#[test]
fn trickling_clients_are_cut_at_their_deadline() {
    // The test config: command_timeout 5 s, login_timeout 10 s; 40 s of trickle would
    // outlast both many times over if each byte moved the deadline.
    let site = Site::start("slowloris");
    let smtp = site.levee.ports.relay;
    let imap = site.levee.ports.imap;
    let smtp_slow = std::thread::spawn(move || trickle(smtp, "127.0.0.3", b"EHLO "));
    let imap_slow = std::thread::spawn(move || trickle(imap, "127.0.0.4", b"a1 CAPA"));
    let (said, sent) = smtp_slow.join().unwrap();
    assert!(
        said.starts_with("421 "),
        "SMTP: {said:?} after {sent} bytes"
    );
    let (said, sent) = imap_slow.join().unwrap();
    assert!(said.contains("* BYE"), "IMAP: {said:?} after {sent} bytes");
}

#[test]
fn a_new_certificate_on_sighup_serves_new_handshakes_and_keeps_sessions() {
    let site = Site::start_with("tlsreload", LeveeMode::Child, "");
    let dir = site.dir.path();
    let old_ca = dir.join("old-cert.pem");
    std::fs::copy(dir.join("cert.pem"), &old_ca).unwrap();
    let imaps = site.levee.ports.imaps;
    let password = site.password("alice");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let old = Security::tls(&old_ca).unwrap();
        let mut session = ImapClient::connect(imaps, &old)
            .await
            .expect("TLS with the old cert");
        session.login("alice", &password).await.unwrap();
        session.select("INBOX").await.unwrap();

        levee_proxy::tls::write_self_signed(dir, &["localhost", "levee.test"]).unwrap();
        let pid = site.levee.pid().expect("levee runs as a child");
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(hup.success());

        let new = Security::tls(&dir.join("cert.pem")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ImapClient::connect(imaps, &new).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the new certificate was never presented"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A fresh client (no session to resume, which would skip the certificate).
        let old = Security::tls(&old_ca).unwrap();
        assert!(
            ImapClient::connect(imaps, &old).await.is_err(),
            "a new handshake still presents the old certificate"
        );
        session
            .ok("NOOP")
            .await
            .expect("the session from before the reload goes on");
    });
    assert!(site.levee.log().contains("TLS certificate reloaded"));
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_connection_flood_stays_within_its_memory_bound() {
    let mut site = Site::start_with("flood-memory", LeveeMode::Child, "");
    site.levee
        .reconfigure(|text| text.replacen("[smtp]\n", "[smtp]\nmax_connections_per_ip = 20\n", 1));
    let smtp = site.levee.ports.relay;
    let pid = site.levee.pid().expect("levee runs as a child");
    let before = rss_kib(pid);

    // 25 addresses hold their 20 sessions each; one more address hammers past its share.
    let mut held = Vec::new();
    for host in 1..=25 {
        for _ in 0..20 {
            let stream = connect_from(&format!("127.0.1.{host}"), smtp);
            assert!(first_line(&stream).starts_with("220 "));
            held.push(stream);
        }
    }
    let mut refused = 0;
    let mut hammer = Vec::new();
    for _ in 0..500 {
        let stream = connect_from("127.0.2.1", smtp);
        if first_line(&stream).starts_with("421 4.7.0") {
            refused += 1;
        }
        hammer.push(stream);
    }
    let during = rss_kib(pid);
    let per_session = (during.saturating_sub(before)) as f64 / held.len() as f64;
    println!(
        "RSS before {before} KiB, with {} sessions held and {refused} refused {during} KiB: {per_session:.1} KiB per session",
        held.len()
    );
    assert_eq!(refused, 480, "past 20 sessions, 127.0.2.1 is refused");
    assert!(
        per_session < 64.0,
        "{per_session:.1} KiB per idle SMTP session (bound 64 KiB)"
    );

    // The flood over, levee serves as before.
    drop(held);
    drop(hammer);
    let verdict = levee_tests::send_sample(
        site.dir.path(),
        smtp,
        "after-flood@example.org",
        "alice@example.test",
    );
    assert_eq!(verdict["code"], 250, "a message after the flood: {verdict}");
}
