//! Training: [`train`] a run from a config, or [`resume`] one from its last checkpoint.
//!
//! The loop itself is `training_loop`; validation, checkpoint keeping and the manifest have
//! a module each.

mod checkpoints;
mod manifest;
mod progress;
mod training_loop;
mod validation;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::Serialize;
use wick_data::batcher::epoch_seed;
use wick_data::{Example, Pair};
use wick_model::{DropoutRng, Model, ParamStore, Seq2Seq, ops};

pub use self::checkpoints::kept_checkpoints;
use self::checkpoints::write_json;
use self::manifest::{DataFile, Manifest};
pub use self::progress::{Progress, StderrProgress};
use self::training_loop::run_loop;
pub use self::validation::{Validation, bleu_chrf, evaluate_loss};
use crate::checkpoint;
use crate::config::Config;
use crate::datacheck::sources_in_train;
use crate::optim::AdamW;
use crate::prepare::{
    Split, drop_overlong, encode_pairs, load_split, load_split_reporting, train_tokenizers,
};
use crate::run::{Tokenizers, TrainerState, frozen_model, git_commit, sha256_file};
use crate::step::replicas;

/// What a finished training reports.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub epochs: usize,
    pub best_dev_bleu: Option<f64>,
    pub best_step: Option<usize>,
    pub seconds: f64,
    pub tgt_tokens_per_s: f64,
    pub peak_rss_mb: Option<f64>,
    pub stop_reason: String,
}

/// Everything a training needs.
pub struct TrainRequest {
    pub config: Config,
    /// Where the config came from (a path or "embedded default"), for the manifest.
    pub config_source: String,
    pub run_dir: PathBuf,
    pub device: Device,
    /// Where progress goes.
    pub progress: Box<dyn Progress>,
}

impl TrainRequest {
    /// Training `config` into `run_dir` (which must not exist, or be empty) on the CPU,
    /// progress on stderr.
    pub fn new(config: Config, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            config,
            config_source: "a program's config".to_string(),
            run_dir: run_dir.into(),
            device: Device::Cpu,
            progress: Box::new(StderrProgress::default()),
        }
    }
}

/// Consecutive skipped updates (`train.skip_nonfinite`) after which training gives up.
const MAX_SKIPPED_IN_A_ROW: usize = 10;

/// The file `wick train --resume` continues from.
pub const RESUME_FILE: &str = "resume.safetensors";
/// One JSON object per validation.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// One JSON object per `train.log_every` updates: the training curve.
pub const PROGRESS_FILE: &str = "progress.jsonl";
const OPTIM_PREFIX: &str = "optim.";

pub(crate) struct Trainer {
    cfg: Config,
    dir: PathBuf,
    tok: Tokenizers,
    store: ParamStore,
    model: Model,
    /// `model` and the replicas that run a batch's other shards (`crate::step`): the same
    /// parameters, their own dropout streams.
    replicas: Vec<Model>,
    /// Same weights as `model`, detached: validation builds no autograd graph.
    eval_model: Model,
    opt: AdamW,
    state: TrainerState,
    dev_pairs: Vec<Pair>,
    dev_examples: Vec<Example>,
    /// Training time of earlier sessions of this run, and when this one started.
    prior_elapsed: f64,
    started: Instant,
    progress: Box<dyn Progress>,
}

impl Trainer {
    /// Seconds of training of the whole run: earlier sessions and this one.
    fn train_seconds(&self) -> f64 {
        self.prior_elapsed + self.started.elapsed().as_secs_f64()
    }

    /// A fresh model (seeded by `train.seed`) and optimizer for `cfg`.
    fn new(
        cfg: Config,
        dir: PathBuf,
        tok: Tokenizers,
        dev_pairs: Vec<Pair>,
        dev_examples: Vec<Example>,
        device: &Device,
        mut progress: Box<dyn Progress>,
    ) -> Result<Self> {
        let vocab = tok.vocab_sizes();
        let store = ParamStore::new(cfg.train.seed);
        let dropout_rng = DropoutRng::new(epoch_seed(cfg.train.seed, usize::MAX));
        let model = cfg
            .model
            .build(vocab, dropout_rng, store.var_builder(DType::F32, device))?;
        let eval_model = frozen_model(&cfg.model, vocab, &store, device)?;
        let replicas = replicas(&model, &cfg.model, &store, device, cfg.train.shards)?;
        let t = &cfg.train;
        let opt = AdamW::new(
            store.vars(),
            t.adam_beta1,
            t.adam_beta2,
            t.adam_eps,
            t.weight_decay,
        )?;
        progress.message(&format!(
            "model: arch = {}, {} parameters in {} tensors, device {:?}, {} ops",
            model.arch(),
            store.n_params(),
            store.len(),
            device,
            ops::path_name(device)
        ));
        Ok(Self {
            cfg,
            dir,
            tok,
            store,
            model,
            replicas,
            eval_model,
            opt,
            state: TrainerState::default(),
            dev_pairs,
            dev_examples,
            prior_elapsed: 0.0,
            started: Instant::now(),
            progress,
        })
    }
}

/// Runs a whole training as configured.
pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    let TrainRequest {
        config: cfg,
        config_source,
        run_dir: dir,
        device,
        mut progress,
    } = req;
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "run directory {} already exists and is not empty; choose another --run-dir",
            dir.display()
        )
    }
    // Data first: unreadable data must not leave a half-made run directory behind.
    let (train_pairs, bad_train) = load_split_reporting(&cfg, Split::Train)?;
    let (dev_pairs, bad_dev) = load_split_reporting(&cfg, Split::Dev)?;
    // Held-out sources that are also training sources: what the data summary reports.
    let dev_leak = sources_in_train(&train_pairs, &dev_pairs);
    let test_leak = match load_split(&cfg, Split::Test) {
        Ok(test) if !test.is_empty() => Some(sources_in_train(&train_pairs, &test)),
        _ => None,
    };
    std::fs::create_dir_all(dir.join("checkpoints"))
        .with_context(|| format!("cannot create run directory {}", dir.display()))?;
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    let (train_pairs, overlong) = drop_overlong(train_pairs, cfg.data.max_len);
    // Dev pairs too long to train on are too long to validate on.
    let (dev_pairs, _) = drop_overlong(dev_pairs, cfg.data.max_len);
    let tok = train_tokenizers(&cfg, &train_pairs)?;
    tok.save(&dir)?;
    let (train_examples, dropped) = encode_pairs(&tok, &train_pairs, Some(cfg.data.max_len))?;
    let dropped = dropped + overlong;
    let (dev_examples, _) = encode_pairs(&tok, &dev_pairs, Some(cfg.data.max_len))?;
    if train_examples.is_empty() {
        bail!("no training pair fits data.max_len = {}", cfg.data.max_len)
    }
    progress.message(&format!(
        "data: {} train pairs ({} dropped: longer than data.max_len = {} tokens), {} dev pairs; vocabulary {} / {}{}",
        train_examples.len(),
        dropped,
        cfg.data.max_len,
        dev_pairs.len(),
        tok.src.vocab_size(),
        tok.tgt.vocab_size(),
        if tok.joint { " (joint)" } else { "" }
    ));

    let vocab = tok.vocab_sizes();
    let mut tr = Trainer::new(
        cfg.clone(),
        dir.clone(),
        tok,
        dev_pairs,
        dev_examples,
        &device,
        progress,
    )?;
    let n_params = tr.store.n_params();

    let mut data_files = Vec::new();
    for (split, spec) in [
        ("train", &cfg.data.train),
        ("dev", &cfg.data.dev),
        ("test", &cfg.data.test),
    ] {
        for p in spec.iter().flat_map(|s| s.paths()) {
            // Hub files are hashed in the cache; `path` keeps the hf:// name the config used.
            let local = wick_data::hub::resolve(p)?;
            data_files.push(DataFile {
                split,
                path: p.display().to_string(),
                sha256: sha256_file(&local)?,
            });
        }
    }
    write_json(
        &dir.join("manifest.json"),
        &Manifest {
            wick_version: env!("CARGO_PKG_VERSION"),
            arch: cfg.model.arch().to_string(),
            ops: ops::path_name(&device),
            git_commit: git_commit(),
            seed: cfg.train.seed,
            device: format!("{device:?}"),
            config_source,
            data: data_files,
            synthetic: cfg.data.synthetic.as_ref().map(|s| format!("{s:?}")),
            train_pairs: train_examples.len(),
            train_pairs_dropped: dropped,
            bad_lines: bad_train.into_iter().chain(bad_dev).collect(),
            dev_pairs: tr.dev_pairs.len(),
            dev_sources_in_train: dev_leak,
            test_sources_in_train: test_leak,
            vocab_src: vocab.src,
            vocab_tgt: vocab.tgt,
            params: n_params,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    )?;

    run_loop(&mut tr, &train_examples)
}

/// What `wick train --resume` needs.
pub struct ResumeRequest {
    pub run_dir: PathBuf,
    /// `--set` overrides on top of the run's config; `[model]` and `[data]` cannot change.
    pub overrides: Vec<String>,
    pub device: Device,
    /// Where progress goes.
    pub progress: Box<dyn Progress>,
}

/// Continues a run from `checkpoints/resume.safetensors`, exactly where it stopped: same
/// weights, optimizer moments, schedule position, data order and dropout stream.
pub fn resume(req: ResumeRequest) -> Result<TrainSummary> {
    let dir = req.run_dir;
    let run = crate::run::Run::open(&dir)?;
    let text = std::fs::read_to_string(dir.join("config.toml"))?;
    let cfg = Config::from_toml(&text, &dir.join("config.toml"), &req.overrides)?;
    for (section, same) in [
        ("[model]", cfg.model == run.config.model),
        ("[data]", cfg.data == run.config.data),
    ] {
        if !same {
            bail!(
                "--resume cannot change {section}: the checkpoint and tokenizer were built for the run's own values"
            )
        }
    }
    if cfg.train.seed != run.config.train.seed {
        bail!("--resume cannot change train.seed: it fixes the data order and dropout of the run")
    }
    let path = dir.join("checkpoints").join(RESUME_FILE);
    if !path.is_file() {
        bail!(
            "{}: nothing to resume from (the run saved no checkpoint yet)",
            path.display()
        )
    }
    let (tensors, meta) = checkpoint::load(&path, &req.device)?;
    let state: TrainerState =
        serde_json::from_str(meta.get("trainer_state").map(String::as_str).unwrap_or(""))
            .with_context(|| format!("{}: no readable trainer state", path.display()))?;
    let rng: rand_chacha::ChaCha8Rng =
        serde_json::from_str(meta.get("dropout_rng").map(String::as_str).unwrap_or(""))
            .with_context(|| format!("{}: no readable dropout state", path.display()))?;

    let train_pairs = load_split(&cfg, Split::Train)?;
    let (dev_pairs, _) = drop_overlong(load_split(&cfg, Split::Dev)?, cfg.data.max_len);
    let (train_pairs, _) = drop_overlong(train_pairs, cfg.data.max_len);
    let (train_examples, _) = encode_pairs(&run.tokenizers, &train_pairs, Some(cfg.data.max_len))?;
    let (dev_examples, _) = encode_pairs(&run.tokenizers, &dev_pairs, Some(cfg.data.max_len))?;
    let mut tr = Trainer::new(
        cfg.clone(),
        dir.clone(),
        run.tokenizers,
        dev_pairs,
        dev_examples,
        &req.device,
        req.progress,
    )?;
    let (optim, weights): (HashMap<String, _>, HashMap<String, _>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with(OPTIM_PREFIX));
    tr.store
        .load(&weights)
        .with_context(|| format!("{} does not fit the run's model", path.display()))?;
    let optim = optim
        .into_iter()
        .map(|(k, v)| (k[OPTIM_PREFIX.len()..].to_string(), v))
        .collect();
    tr.opt.load_state(&optim, state.step)?;
    tr.model.dropout_rng().restore(rng)?;
    tr.prior_elapsed = state.elapsed_seconds;
    // Validations and log lines written after the resume point (by a session that was
    // killed) are redone, so each log keeps one entry per step.
    for log in [METRICS_FILE, PROGRESS_FILE] {
        let path = dir.join(log);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= state.step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            checkpoint::write_atomic(&path, kept.as_bytes())?;
        }
    }
    tr.state = TrainerState {
        finished: false,
        ..state
    };
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    manifest::note_ops(&dir, ops::path_name(&req.device))?;
    tr.progress.message(&format!(
        "resuming {} at step {} (epoch {})",
        dir.display(),
        tr.state.step,
        tr.state.epoch + 1
    ));
    run_loop(&mut tr, &train_examples)
}
