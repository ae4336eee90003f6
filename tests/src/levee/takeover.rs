//! A levee child replaced by another started beside it (`levee run --take-over`).

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Daemon, Levee, Running};

impl Levee {
    /// Starts a second `levee run` child on the same configuration with `--take-over`,
    /// waits until it listens beside this one, and stops this one with SIGTERM. Returns,
    /// once the old process has exited, how long that took; from then on this handle is
    /// the new process. Needs [`super::LeveeMode::Child`].
    pub fn take_over(&mut self) -> Duration {
        assert!(
            matches!(self.daemon, Daemon::Run),
            "only `levee run` takes over"
        );
        let Running::Child(mut old) = std::mem::replace(&mut self.running, Running::Stopped) else {
            panic!("take_over needs a running LeveeMode::Child");
        };
        let marker = "listening beside the levee being replaced";
        let before = self.log().matches(marker).count();
        self.running = self.spawn_child_with(&["--take-over"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(marker).count() == before {
            assert!(
                Instant::now() < deadline,
                "the successor did not listen beside levee:\n{}",
                crate::tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let stopping = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &old.id().to_string()])
            .status();
        let status = old.wait().expect("the old levee's exit");
        assert!(status.success(), "the old levee exited with {status}");
        stopping.elapsed()
    }
}
