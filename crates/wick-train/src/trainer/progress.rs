//! What a training reports while it runs. The library prints lines to stderr
//! ([`StderrProgress`]); the `wick` binary draws a progress bar from the same events.

/// Receives a training's progress.
pub trait Progress: Send {
    /// Training starts at update `step` (0, or where a resumed run continues); `planned` is
    /// the number of updates it will stop at, when a step or epoch limit fixes it.
    fn start(&mut self, _step: usize, _planned: Option<usize>) {}

    /// An update has been applied.
    fn update(&mut self, _step: usize) {}

    /// The `train.log_every` summary of the latest updates (loss, learning rate, speed).
    fn log(&mut self, step: usize, line: &str);

    /// A message between the progress lines: validations, skipped updates, data and model
    /// summaries.
    fn message(&mut self, line: &str);

    /// Training has stopped (the progress display can go).
    fn finish(&mut self) {}
}

/// Lines on stderr: `step N/PLANNED …` every `train.log_every` updates, and every message.
#[derive(Debug, Default)]
pub struct StderrProgress {
    planned: Option<usize>,
}

impl Progress for StderrProgress {
    fn start(&mut self, _step: usize, planned: Option<usize>) {
        self.planned = planned;
    }

    fn log(&mut self, step: usize, line: &str) {
        match self.planned {
            Some(p) => eprintln!("step {step}/{p} {line}"),
            None => eprintln!("step {step} {line}"),
        }
    }

    fn message(&mut self, line: &str) {
        eprintln!("{line}");
    }
}
