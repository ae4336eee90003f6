//! Progress of long journal work on stderr: a bar on a terminal, a plain line every few
//! seconds otherwise (a log, a pipe), so stdout stays the result alone.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written.
const LINE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    /// Work on `total` records, named `what` in the lines.
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} records, {per_sec}, {eta} left",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        });
        Progress {
            what,
            total,
            bar,
            last_line: Instant::now(),
        }
    }

    /// `done` records so far.
    pub fn at(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                let percent = (done * 100).checked_div(self.total).unwrap_or(100);
                eprintln!(
                    "levee journal {}: {done} of {} records ({percent}%)",
                    self.what, self.total
                );
            }
            None => {}
        }
    }

    /// Clears the bar; the caller prints the result.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
