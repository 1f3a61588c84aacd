//! Progress bars on stderr, shown only when stderr is a terminal so that
//! logs, pipes and tests see no control sequences.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A progress bar that does nothing unless stderr is a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar labelled `label`, counting `unit`s (shown after the counts).
    pub fn new(label: &str, unit: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let template = format!("{{msg:>9}} [{{bar:40.cyan/blue}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
        let style = ProgressStyle::with_template(&template)
            .expect("the template is a fixed, valid indicatif template")
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
        bar.set_message(label.to_string());
        Progress { bar: Some(bar) }
    }

    /// A bar for a byte count, shown as sizes rather than raw counts.
    pub fn bytes(label: &str) -> Progress {
        let mut p = Progress::new(label, "");
        if let Some(bar) = &mut p.bar {
            let style = ProgressStyle::with_template(
                "{msg:>9} [{bar:40.cyan/blue}] {binary_bytes}/{binary_total_bytes} ({elapsed})",
            )
            .expect("the template is a fixed, valid indicatif template")
            .progress_chars("=> ");
            bar.set_style(style);
        }
        p
    }

    /// Reports `done` of `total`.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(total) {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path that never calls finish must not leave a stale bar.
        self.finish();
    }
}
