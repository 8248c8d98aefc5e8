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

mod provenance;
mod state;
mod tokenizers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use wick_model::{DropoutRng, Model, ModelConfig, ParamStore, VocabSizes};

pub use self::provenance::{git_commit, memory_mb, reset_peak_memory, sha256_file};
pub use self::state::{BestCheckpoint, CheckpointEntry, CheckpointIndex, TrainerState};
pub use self::tokenizers::Tokenizers;
use crate::config::Config;

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
    pub fn load_model(&self, which: &Which, device: &Device) -> Result<Model> {
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
) -> Result<Model> {
    let store = ParamStore::new(0);
    cfg.model.build(
        vocab,
        DropoutRng::new(0),
        store.var_builder(DType::F32, device),
    )?;
    store.load(&tensors)?;
    frozen_model(&cfg.model, vocab, &store, device)
}

/// A model that reads the current values of `store` without recording gradients: its
/// tensors share storage with the trainable variables, so it follows every update. What
/// evaluates and decodes is built this way: an op on a trainable variable records its inputs
/// for the backward pass, and so does every op after it, so that a model over the variables
/// themselves keeps each activation alive for as long as anything computed from it is (a
/// decoding copy also cuts its encoder output loose, see `Model`'s `encode`).
pub fn frozen_model(
    cfg: &ModelConfig,
    vocab: VocabSizes,
    store: &ParamStore,
    device: &Device,
) -> Result<Model> {
    let tensors = store
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok(cfg.build(vocab, DropoutRng::new(0), vb)?)
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
