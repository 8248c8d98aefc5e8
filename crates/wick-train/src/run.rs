//! The run directory: everything a run produces, and everything `evaluate` and `translate`
//! need to rebuild the model.
//!
//! ```text
//! runs/<name>/
//!   config.toml             resolved configuration (every default filled in)
//!   tokenizer.json          joint vocabulary, or tokenizer.src.json + tokenizer.tgt.json
//!   checkpoints/best.safetensors, checkpoints/last.safetensors
//!   trainer_state.json      step, epoch, best dev BLEU, early-stopping counter
//!   metrics.jsonl           one JSON object per validation
//!   manifest.json           data hashes, seed, wick version, git commit
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use wick_data::SubwordTokenizer;
use wick_model::{DropoutRng, ParamStore, Transformer, VocabSizes};

use crate::config::Config;

/// The tokenizer(s) of a run.
#[derive(Clone, Debug)]
pub struct Tokenizers {
    pub src: SubwordTokenizer,
    pub tgt: SubwordTokenizer,
    pub joint: bool,
}

impl Tokenizers {
    pub fn vocab_sizes(&self) -> VocabSizes {
        VocabSizes {
            src: self.src.vocab_size(),
            tgt: self.tgt.vocab_size(),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        if self.joint {
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.json"),
                self.src.to_json()?.as_bytes(),
            )?;
        } else {
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.src.json"),
                self.src.to_json()?.as_bytes(),
            )?;
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.tgt.json"),
                self.tgt.to_json()?.as_bytes(),
            )?;
        }
        Ok(())
    }

    pub fn load(dir: &Path, joint: bool) -> Result<Self> {
        if joint {
            let t = SubwordTokenizer::load(&dir.join("tokenizer.json"))?;
            Ok(Self {
                src: t.clone(),
                tgt: t,
                joint,
            })
        } else {
            Ok(Self {
                src: SubwordTokenizer::load(&dir.join("tokenizer.src.json"))?,
                tgt: SubwordTokenizer::load(&dir.join("tokenizer.tgt.json"))?,
                joint,
            })
        }
    }
}

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

/// Which checkpoint to load: `best`, `last`, or a file (a name in the run's `checkpoints/`,
/// such as `step-1200.safetensors` or `avg-last-5.safetensors`, or any path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
    File(PathBuf),
}

impl std::str::FromStr for Which {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "best" => Which::Best,
            "last" => Which::Last,
            other => Which::File(PathBuf::from(other)),
        })
    }
}

impl Which {
    /// A short name for output files: `best`, `last`, or the file's stem.
    pub fn label(&self) -> String {
        match self {
            Which::Best => "best".into(),
            Which::Last => "last".into(),
            Which::File(p) => p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("checkpoint")
                .to_string(),
        }
    }
}

/// An existing run directory.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub config: Config,
    pub tokenizers: Tokenizers,
}

impl Run {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.toml");
        if !dir.is_dir() {
            bail!("{}: no such run directory", dir.display())
        }
        if !cfg_path.is_file() {
            bail!(
                "{} is not a wick run directory (it has no config.toml)",
                dir.display()
            )
        }
        let config = Config::load(&cfg_path, &[])?;
        let tokenizers = Tokenizers::load(dir, config.data.joint_vocab)
            .with_context(|| format!("run directory {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizers,
        })
    }

    pub fn checkpoint_path(&self, which: &Which) -> PathBuf {
        let dir = self.dir.join("checkpoints");
        match which {
            Which::Best => dir.join("best.safetensors"),
            Which::Last => dir.join("last.safetensors"),
            // A bare name is looked up in the run first; anything else is a path.
            Which::File(p) if p.components().count() == 1 && dir.join(p).is_file() => dir.join(p),
            Which::File(p) => p.clone(),
        }
    }

    /// Builds the model for inference from a checkpoint of this run.
    pub fn load_model(&self, which: &Which, device: &Device) -> Result<Transformer> {
        let path = self.checkpoint_path(which);
        if !path.is_file() {
            bail!(
                "{}: no such checkpoint (has the run saved one yet? `checkpoints/index.json` lists the run's checkpoints)",
                path.display(),
            )
        }
        let (tensors, _) = crate::checkpoint::load(&path, device)?;
        inference_model(&self.config, self.tokenizers.vocab_sizes(), tensors, device).with_context(
            || {
                format!(
                    "checkpoint {} does not fit the run's config",
                    path.display()
                )
            },
        )
    }
}

/// A model over fixed weights loaded from `tensors`; every parameter must be present with
/// its shape, and no other tensor may be.
pub fn inference_model(
    cfg: &Config,
    vocab: VocabSizes,
    tensors: HashMap<String, candle_core::Tensor>,
    device: &Device,
) -> Result<Transformer> {
    let store = ParamStore::new(0);
    Transformer::new(
        &cfg.model,
        vocab,
        DropoutRng::new(0),
        store.var_builder(DType::F32, device),
    )?;
    store.load(&tensors)?;
    frozen_model(cfg, vocab, &store, device)
}

/// A model that reads the current values of `store` without recording gradients: its
/// tensors share storage with the trainable variables, so it follows every update.
pub fn frozen_model(
    cfg: &Config,
    vocab: VocabSizes,
    store: &ParamStore,
    device: &Device,
) -> Result<Transformer> {
    let tensors = store
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok(Transformer::new(&cfg.model, vocab, DropoutRng::new(0), vb)?)
}

/// Picks `runs/<name>`, or `runs/<name>-2`, `-3`, … if taken.
pub fn fresh_run_dir(base: &Path, name: &str) -> PathBuf {
    let first = base.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| base.join(format!("{name}-{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// The commit of the working directory's git checkout, if any.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Peak and current resident memory of this process in MB, from `/proc/self/status`.
pub fn memory_mb() -> (Option<f64>, Option<f64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
