//! What a report shows, read from a run directory alone: the resolved config, the manifest,
//! the trainer state, `metrics.jsonl` (validations), `progress.jsonl` (the training log) and
//! the latest test evaluation. Runs that are still training, resumed runs and runs of any
//! architecture read the same way; files a run has not written yet are simply absent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::evaluate::EvalReport;
use crate::run::{CheckpointIndex, TrainerState};

/// One validation (`metrics.jsonl`).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ValidationPoint {
    pub step: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_bleu: f64,
    pub dev_chrf: f64,
    pub tgt_tokens_per_s: f64,
    /// Training time up to this validation, across resumes; runs written before the field
    /// existed have only `elapsed_s`, the time of their own session.
    #[serde(default)]
    pub train_seconds: Option<f64>,
    #[serde(default)]
    pub elapsed_s: f64,
}

impl ValidationPoint {
    pub(crate) fn minutes(&self) -> f64 {
        self.train_seconds.unwrap_or(self.elapsed_s) / 60.0
    }
}

/// One `train.log_every` summary (`progress.jsonl`).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ProgressPoint {
    pub step: usize,
    pub train_loss: f64,
    pub lr: f64,
    pub tgt_tokens_per_s: f64,
    pub train_seconds: f64,
}

/// A run directory as the report sees it.
#[derive(Debug)]
pub(crate) struct RunRecord {
    pub dir: PathBuf,
    pub config_text: String,
    pub manifest: Option<serde_json::Value>,
    pub state: Option<TrainerState>,
    pub index: Option<CheckpointIndex>,
    pub validations: Vec<ValidationPoint>,
    pub progress: Vec<ProgressPoint>,
    /// The latest test evaluation and its file name.
    pub test: Option<(String, EvalReport)>,
}

/// JSON Lines of `T`, in file order; unreadable lines (a write cut short) are skipped. A
/// file that does not exist is empty.
fn json_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn json_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The most recently written `eval.test.*.json` of the run.
fn latest_test_eval(dir: &Path) -> Option<(String, EvalReport)> {
    let mut found: Vec<(std::time::SystemTime, String, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let wanted = name.starts_with("eval.test.") && name.ends_with(".json");
            let time = e.metadata().ok()?.modified().ok()?;
            wanted.then_some((time, name, e.path()))
        })
        .collect();
    found.sort();
    let (_, name, path) = found.pop()?;
    Some((name, json_file(&path)?))
}

/// Points of a log that a resumed run may have written twice: the later of two entries of
/// one step wins (a resumed session redoes what its predecessor logged after the resume
/// point), and the points come back in step order.
fn last_per_step<T>(points: Vec<T>, step: impl Fn(&T) -> usize) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(points.len());
    for p in points {
        while out.last().is_some_and(|q| step(q) >= step(&p)) {
            out.pop();
        }
        out.push(p);
    }
    out
}

impl RunRecord {
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.toml");
        let config_text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "{} is not a wick run directory (no readable config.toml)",
                dir.display()
            )
        })?;
        let validations = json_lines::<ValidationPoint>(&dir.join("metrics.jsonl"))?;
        let progress = json_lines::<ProgressPoint>(&dir.join("progress.jsonl"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config_text,
            manifest: json_file(&dir.join("manifest.json")),
            state: json_file(&dir.join("trainer_state.json")),
            index: json_file(&dir.join("checkpoints").join(CheckpointIndex::FILE)),
            validations: last_per_step(validations, |v| v.step),
            progress: last_per_step(progress, |p| p.step),
            test: latest_test_eval(dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::last_per_step;

    #[test]
    fn a_resumed_log_keeps_one_point_per_step() {
        // Steps 100..300 logged, then a resume at 200 logs 300 and 400 again.
        let log = vec![(100, 'a'), (200, 'a'), (300, 'a'), (300, 'b'), (400, 'b')];
        let kept = last_per_step(log, |p| p.0);
        assert_eq!(kept, vec![(100, 'a'), (200, 'a'), (300, 'b'), (400, 'b')]);
        let log = vec![(100, 'a'), (200, 'a'), (300, 'a'), (200, 'b'), (300, 'b')];
        assert_eq!(
            last_per_step(log, |p| p.0),
            vec![(100, 'a'), (200, 'b'), (300, 'b')]
        );
    }
}
