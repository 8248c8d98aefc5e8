//! What a run records about its progress and its checkpoints.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Progress saved next to the checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub epoch: usize,
    /// Dev BLEU of the best checkpoint.
    pub best_bleu: Option<f64>,
    /// The selection figure of the best checkpoint (BLEU, or −loss), higher is better.
    pub best_score: Option<f64>,
    pub best_step: Option<usize>,
    /// Validations since the best one (early stopping).
    pub bad_validations: usize,
    /// Update groups of the current epoch already applied (where a resumed run continues).
    #[serde(default)]
    pub groups_done_in_epoch: usize,
    /// Training time so far, across resumes (`train.max_minutes` counts all of it).
    pub elapsed_seconds: f64,
    pub finished: bool,
    /// Validation checkpoints on disk (`checkpoints/step-N.safetensors`), oldest first.
    #[serde(default)]
    pub checkpoints: Vec<CheckpointEntry>,
    /// Updates skipped for a non-finite loss or gradient (`train.skip_nonfinite`).
    #[serde(default)]
    pub skipped_updates: usize,
}

/// A validation checkpoint kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    /// File name in `checkpoints/`.
    pub file: String,
    pub step: usize,
    pub epoch: usize,
    pub dev_bleu: f64,
    pub dev_loss: f64,
    /// The `best_metric` figure, higher is better (BLEU, or −loss).
    pub score: f64,
}

/// `best.safetensors` in the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestCheckpoint {
    pub file: String,
    pub step: usize,
    pub dev_bleu: f64,
    pub score: f64,
}

/// `checkpoints/index.json`: what each checkpoint file of a run is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointIndex {
    pub best_metric: String,
    /// `best.safetensors`: the best validation so far.
    pub best: Option<BestCheckpoint>,
    /// `last.safetensors`: the latest weights (also in `resume.safetensors`).
    pub last_step: usize,
    /// Kept validation checkpoints, best first.
    pub by_score: Vec<CheckpointEntry>,
    /// Kept validation checkpoints, newest first.
    pub by_step: Vec<CheckpointEntry>,
}

impl CheckpointIndex {
    pub const FILE: &'static str = "index.json";

    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("checkpoints").join(Self::FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: the run has written no validation checkpoint yet",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a checkpoint index", path.display()))
    }
}
