//! Watching and signalling a running levee: its pid, SIGSTOP/SIGCONT, `/status` and
//! `/metrics`.

use std::process::Command;
use std::time::Duration;

use super::{Levee, Running};

impl Levee {
    /// The child's process id (`None` in process or when stopped).
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Child(child) => Some(child.id()),
            _ => None,
        }
    }

    /// Freezes the child with `SIGSTOP`: its sockets stay open but nothing answers. Call
    /// [`Levee::resume`] before [`Levee::stop`] (a stopped process ignores `SIGTERM` until
    /// continued); [`Levee::kill`] and drop work either way.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a child frozen by [`Levee::pause`] (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("pause/resume need LeveeMode::Child");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// `GET /status` on the metrics listener, parsed.
    pub fn status(&self) -> serde_json::Value {
        let response = self.http_get("/status");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("no HTTP body in /status response: {response:?}"));
        serde_json::from_str(body)
            .unwrap_or_else(|err| panic!("/status is not JSON ({err}): {body:?}"))
    }

    /// The value of an unlabelled sample `name` in `/metrics`, if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::metric_value(&self.metrics(), name)
    }

    fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.ports.metrics)
            .unwrap_or_else(|err| panic!("metrics endpoint {}: {err}", self.ports.metrics));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: levee\r\n\r\n").as_bytes())
            .expect("HTTP request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("HTTP response");
        text
    }
}
