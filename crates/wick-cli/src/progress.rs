//! Training progress as a bar on a terminal, as lines on stderr otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use wick_train::Progress;

/// `wick train`'s progress: a bar with the latest summary while stderr is a terminal; the
/// lines of `wick_train::StderrProgress` when it is not (logs, pipes, CI).
pub(crate) struct BarProgress {
    bar: Option<ProgressBar>,
    planned: Option<usize>,
}

impl BarProgress {
    pub(crate) fn new() -> Self {
        Self {
            bar: None,
            planned: None,
        }
    }
}

impl Progress for BarProgress {
    fn start(&mut self, step: usize, planned: Option<usize>) {
        self.planned = planned;
        // Runs bounded only by time have no step count to show progress against.
        let (bar, template) = match planned {
            Some(p) => (
                ProgressBar::new(p as u64),
                "{spinner} step {pos}/{len} [{elapsed_precise} < {eta_precise}] {wide_bar} {msg}",
            ),
            None => (
                ProgressBar::no_length(),
                "{spinner} step {pos} [{elapsed_precise}] {msg}",
            ),
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(step as u64);
        self.bar = Some(bar);
    }

    fn update(&mut self, step: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
        }
    }

    fn log(&mut self, step: usize, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.set_message(line.to_string()),
            _ => match self.planned {
                Some(p) => eprintln!("step {step}/{p} {line}"),
                None => eprintln!("step {step} {line}"),
            },
        }
    }

    fn message(&mut self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
