//! The checkpoints a run keeps: `best`, `last` (with `resume.safetensors`), and the
//! validation checkpoints chosen by `train.keep_best` / `train.keep_last`, listed in
//! `checkpoints/index.json`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use wick_model::Seq2Seq;

use super::{OPTIM_PREFIX, RESUME_FILE, Trainer};
use crate::checkpoint;
use crate::run::{BestCheckpoint, CheckpointEntry, CheckpointIndex};

/// Checkpoints best first (earlier step first on ties).
fn by_score(all: &[CheckpointEntry]) -> Vec<CheckpointEntry> {
    let mut v = all.to_vec();
    v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.step.cmp(&b.step)));
    v
}

/// Checkpoints newest first.
fn by_step(all: &[CheckpointEntry]) -> Vec<CheckpointEntry> {
    let mut v = all.to_vec();
    v.sort_by_key(|c| std::cmp::Reverse(c.step));
    v
}

/// The validation checkpoints to keep: the `keep_best` highest scores and the `keep_last`
/// latest steps, oldest first.
pub fn kept_checkpoints(
    all: &[CheckpointEntry],
    keep_best: usize,
    keep_last: usize,
) -> Vec<CheckpointEntry> {
    let keep: std::collections::HashSet<usize> = by_score(all)
        .iter()
        .take(keep_best)
        .chain(by_step(all).iter().take(keep_last))
        .map(|c| c.step)
        .collect();
    let mut kept: Vec<CheckpointEntry> = all
        .iter()
        .filter(|c| keep.contains(&c.step))
        .cloned()
        .collect();
    kept.sort_by_key(|c| c.step);
    kept
}

pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    checkpoint::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

impl Trainer {
    pub(super) fn metadata(&self, dev_bleu: Option<f64>) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        meta.insert("step".into(), self.state.step.to_string());
        meta.insert("epoch".into(), self.state.epoch.to_string());
        meta.insert("wick_version".into(), env!("CARGO_PKG_VERSION").to_string());
        if let Some(b) = dev_bleu {
            meta.insert("dev_bleu".into(), format!("{b:.4}"));
        }
        meta
    }

    /// Writes `checkpoints/<name>` (weights only) and `trainer_state.json`. Saving `last`
    /// also writes `resume.safetensors`: weights, AdamW moments, trainer state and the
    /// dropout stream in one file, so one atomic rename makes a consistent resume point.
    pub(super) fn save(&mut self, name: &str, dev_bleu: Option<f64>) -> Result<()> {
        self.state.elapsed_seconds = self.train_seconds();
        let dir = self.dir.join("checkpoints");
        let mut tensors = self.store.tensors();
        checkpoint::save(&dir.join(name), &tensors, self.metadata(dev_bleu))?;
        if name == "last.safetensors" {
            for (k, v) in self.opt.state_tensors()? {
                tensors.insert(format!("{OPTIM_PREFIX}{k}"), v);
            }
            let mut meta = self.metadata(dev_bleu);
            meta.insert("trainer_state".into(), serde_json::to_string(&self.state)?);
            meta.insert(
                "dropout_rng".into(),
                serde_json::to_string(&self.model.dropout_rng().state()?)?,
            );
            checkpoint::save(&dir.join(RESUME_FILE), &tensors, meta)?;
            // Only now that the resume point no longer lists them may dropped validation
            // checkpoints go: a crash before this line leaves every listed file in place.
            self.prune_checkpoints()?;
        }
        write_json(&self.dir.join("trainer_state.json"), &self.state)
    }

    /// Deletes validation checkpoints the state no longer lists (and temporary files of
    /// interrupted writes), then rewrites `checkpoints/index.json`.
    fn prune_checkpoints(&self) -> Result<()> {
        let dir = self.dir.join("checkpoints");
        let listed: std::collections::HashSet<&str> = self
            .state
            .checkpoints
            .iter()
            .map(|c| c.file.as_str())
            .collect();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale_step = name.starts_with("step-")
                && name.ends_with(".safetensors")
                && !listed.contains(name);
            let stale_tmp = name.starts_with('.') && name.contains(".tmp-");
            if stale_step || stale_tmp {
                std::fs::remove_file(dir.join(name))
                    .with_context(|| format!("cannot remove {}", dir.join(name).display()))?;
            }
        }
        let best = self.state.best_step.map(|step| BestCheckpoint {
            file: "best.safetensors".into(),
            step,
            dev_bleu: self.state.best_bleu.unwrap_or(0.0),
            score: self.state.best_score.unwrap_or(0.0),
        });
        write_json(
            &dir.join(CheckpointIndex::FILE),
            &CheckpointIndex {
                best_metric: format!("{:?}", self.cfg.train.best_metric).to_lowercase(),
                best,
                last_step: self.state.step,
                by_score: by_score(&self.state.checkpoints),
                by_step: by_step(&self.state.checkpoints),
            },
        )
    }
}
