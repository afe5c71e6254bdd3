//! Progress a person can watch: a bar on a terminal, plain lines in a log or a pipe.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
}

impl Progress {
    /// `what` names the job, e.g. "start work" or "template debian-12".
    pub fn new(what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:20}] {pos}/{len} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            what: what.to_string(),
        }
    }

    /// A step with a position out of a total (0 total = unknown).
    pub fn step(&self, step: &str, done: u32, total: u32) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(u64::from(total));
                bar.set_position(u64::from(done));
                bar.set_message(step.to_string());
            }
            None if total > 0 => eprintln!("{}: [{done}/{total}] {step}", self.what),
            None => eprintln!("{}: {step}", self.what),
        }
    }

    /// A free-form line (template builds report what mmdebstrap is doing).
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_string()),
            None => eprintln!("{}: {line}", self.what),
        }
    }

    pub fn finish(self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("{}: {message}", self.what),
        }
    }

    pub fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
