//! Progress of long operations on stderr: a bar (indicatif) on a terminal, plain lines
//! otherwise, so a log file or CI gets one readable line per update and no escape codes.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar (with a length) or a spinner on a terminal; nothing drawn elsewhere, where
/// [`Progress::update`] prints its status as a line instead.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// `len` steps (`None`: a spinner, for work of unknown size).
    pub fn new(len: Option<u64>) -> Progress {
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        let template = if len.is_some() {
            "{spinner} {elapsed:>4} [{wide_bar}] {pos}/{len} {msg}"
        } else {
            "{spinner} {elapsed:>4} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress { bar }
    }

    /// Moves the bar to `position` and shows `status` beside it; without a terminal, prints
    /// `status` as a line.
    pub fn update(&self, position: u64, status: &str) {
        if self.bar.is_hidden() {
            eprintln!("{status}");
        } else {
            self.bar.set_position(position);
            self.bar.set_message(status.to_owned());
        }
    }

    /// A line that stays (above the bar on a terminal).
    pub fn line(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Whether a bar is drawn (stderr is a terminal).
    pub fn on_terminal(&self) -> bool {
        !self.bar.is_hidden()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
