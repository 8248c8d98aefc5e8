//! The typed run configuration: `[data]`, `[model]`, `[train]`, `[decode]`.
//!
//! Unknown keys are errors (`deny_unknown_fields`), every key has a default in code, and
//! [`Config::validate`] names the offending key. `--set a.b=value` overrides are applied to
//! the TOML tree before it is typed, so they are checked exactly like the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wick_data::synthetic::SyntheticSpec;
use wick_data::{CorpusSpec, OnBadLine};
use wick_model::{DataShape, ModelConfig};

/// The configuration `wick train` uses when given no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../configs/toy.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("--set {text}: {message}")]
    Override { text: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub data: DataConfig,
    /// `arch` and the architecture's own keys (`wick_model::registry`).
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub decode: DecodeConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training pairs: a TSV path or `{ src = …, tgt = … }`. Paths are relative to the
    /// working directory.
    pub train: Option<CorpusSpec>,
    /// Development pairs (validation, early stopping).
    pub dev: Option<CorpusSpec>,
    /// Test pairs (`wick evaluate --split test`).
    pub test: Option<CorpusSpec>,
    /// A generated task instead of files (`[data.synthetic]`).
    pub synthetic: Option<SyntheticSpec>,
    /// Language labels, used in reports only.
    pub src_lang: String,
    pub tgt_lang: String,
    /// A ready `tokenizer.json` for both sides (a path or `hf://OWNER/NAME/tokenizer.json`)
    /// instead of training one: e.g. another wick run's, to share a vocabulary. It must be a
    /// wick tokenizer (`<pad> <s> </s> <unk>` at ids 0-3); `vocab_size` and `min_frequency`
    /// are then unused.
    pub tokenizer: Option<PathBuf>,
    /// One tokenizer for both sides (`tokenizer.json`) or one per side.
    pub joint_vocab: bool,
    /// BPE vocabulary size per tokenizer, special and byte tokens included.
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged by BPE.
    pub min_frequency: u64,
    /// Training pairs with more subword tokens than this on either side are dropped.
    pub max_len: usize,
    /// Malformed lines (invalid UTF-8, not two columns, an empty side, control characters):
    /// `"error"` stops with the file and line, `"skip"` drops them and reports the counts.
    pub on_bad_line: OnBadLine,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: None,
            dev: None,
            test: None,
            synthetic: None,
            tokenizer: None,
            src_lang: "src".into(),
            tgt_lang: "tgt".into(),
            joint_vocab: true,
            vocab_size: 4000,
            min_frequency: 2,
            max_len: 100,
            on_bad_line: OnBadLine::Error,
        }
    }
}

/// How the learning rate moves with the update step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warm-up to `lr`, then `lr·√(warmup/step)` (Vaswani et al., 2017).
    InverseSqrt,
    /// Linear warm-up to `lr`, then constant.
    Constant,
    /// Linear warm-up to `lr`, then half a cosine down to 0 at `train.max_steps`
    /// (Loshchilov & Hutter, 2017): anneals a run of known length.
    Cosine,
}

/// The dev-set figure that selects the best checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    Bleu,
    Loss,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of initialisation, dropout and data order.
    pub seed: u64,
    /// Stop after this many updates (0: no limit).
    pub max_steps: usize,
    /// Stop after this many passes over the training data (0: no limit).
    pub max_epochs: usize,
    /// Stop after this much wall-clock time, in minutes (0: no limit).
    pub max_minutes: f64,
    /// Token budget of one batch: rows × longest side (source or target), padding included.
    pub batch_tokens: usize,
    /// At most this many sentence pairs per batch.
    pub max_sentences: usize,
    /// Batches whose gradients are summed into one update.
    pub accumulate: usize,
    /// Slices of sentences each batch runs as, side by side on the CPU, with gradients
    /// summed (`wick_train::step`). Results depend on this number (each slice draws its own
    /// dropout), not on the thread count; set it to the number of cores on a larger machine.
    pub shards: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Decoupled weight decay (AdamW), applied to weight matrices only (≥ 2-D).
    pub weight_decay: f64,
    /// ε of label-smoothed cross-entropy.
    pub label_smoothing: f64,
    /// Clip gradients to this global L2 norm (0: off).
    pub clip_norm: f64,
    /// Print a progress line every this many updates.
    pub log_every: usize,
    /// Validate on the dev split every this many updates (0: once per epoch).
    pub validate_every: usize,
    /// Write `last.safetensors` every this many updates (0: at validation only).
    pub checkpoint_every: usize,
    /// What picks `best.safetensors` and drives early stopping: `bleu` (higher is better)
    /// or `loss` (dev cross-entropy, lower is better).
    pub best_metric: BestMetric,
    /// Stop when the best metric has not improved for this many validations (0: never).
    pub patience: usize,
    /// Translate at most this many dev sentences for validation BLEU (0: all).
    pub valid_max_sentences: usize,
    /// Beam size of validation BLEU; unset: `decode.beam`. Greedy validation (1) is faster,
    /// and evaluation keeps `decode.beam`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_beam: Option<usize>,
    /// Validation checkpoints kept as `checkpoints/step-N.safetensors`: the `keep_best`
    /// best by `best_metric` plus the `keep_last` most recent (for `wick average`);
    /// `checkpoints/index.json` lists them.
    pub keep_best: usize,
    pub keep_last: usize,
    /// An update whose loss or gradient norm is NaN or infinite stops training (naming the
    /// step; the last checkpoint is kept). With `skip_nonfinite = true` it is skipped
    /// instead, and training stops only after 10 such updates in a row.
    pub skip_nonfinite: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            max_steps: 0,
            max_epochs: 20,
            max_minutes: 0.0,
            batch_tokens: 4096,
            max_sentences: 1024,
            accumulate: 1,
            shards: 2,
            lr: 1e-3,
            schedule: ScheduleKind::InverseSqrt,
            warmup_steps: 1000,
            adam_beta1: 0.9,
            adam_beta2: 0.98,
            adam_eps: 1e-9,
            weight_decay: 0.0,
            label_smoothing: 0.1,
            clip_norm: 1.0,
            log_every: 50,
            validate_every: 0,
            checkpoint_every: 0,
            best_metric: BestMetric::Bleu,
            patience: 0,
            valid_max_sentences: 0,
            valid_beam: None,
            keep_best: 3,
            keep_last: 3,
            skip_nonfinite: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Beam size; 1 is greedy decoding.
    pub beam: usize,
    /// α of the GNMT length penalty `((5 + len) / 6)^α` used to rank beam hypotheses.
    pub length_penalty: f64,
    /// Output length limit: `max_len_a · source_tokens + max_len_b` subword tokens.
    pub max_len_a: f64,
    pub max_len_b: usize,
    /// Token budget of one decoding batch: source tokens × rows × beam (beam search decodes
    /// `beam` hypotheses per sentence). The default, 1,500, keeps a batch's decoding state
    /// within the caches: on the Multi30k Transformer's shape, 1,000–1,500 decoded faster
    /// than 3,000 or 6,000 (greedy and beam 5, float32 and int8) with a third of the memory,
    /// and 500–750 slowed beam search down.
    pub batch_tokens: usize,
    /// Beam hypotheses kept per sentence (`wick translate` prints them all; `wick evaluate`
    /// scores the best and writes the list to `<hyp file>.nbest`). At most `beam`.
    pub n_best: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            beam: 1,
            length_penalty: 0.6,
            max_len_a: 1.5,
            max_len_b: 10,
            batch_tokens: 1500,
            n_best: 1,
        }
    }
}

impl DecodeConfig {
    /// Checks the settings, naming the offending key: `(key, message)`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let err = |key, message: &str| Err((key, message.to_string()));
        if !(self.max_len_a >= 0.0 && self.max_len_a.is_finite()) {
            return err("max_len_a", "must be a non-negative number");
        }
        if self.beam == 0 {
            return err("beam", "must be at least 1");
        }
        if !(self.length_penalty >= 0.0 && self.length_penalty.is_finite()) {
            return err("length_penalty", "must be a non-negative number");
        }
        if self.batch_tokens == 0 {
            return err("batch_tokens", "must be positive");
        }
        if self.n_best == 0 || self.n_best > self.beam {
            return Err((
                "n_best",
                format!("must be between 1 and decode.beam ({})", self.beam),
            ));
        }
        Ok(())
    }

    /// Checks the settings; the error names the key (`decode.beam: must be at least 1`).
    pub fn validate(&self) -> Result<(), String> {
        self.check()
            .map_err(|(key, message)| format!("decode.{key}: {message}"))
    }
}

/// Sets `path` (dotted) in a TOML table, creating tables on the way.
fn set_path(table: &mut toml::Table, text: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Override {
        text: text.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() {
        return Err(err("empty key"));
    }
    // A TOML value if it parses as one (numbers, booleans, strings in quotes, arrays,
    // inline tables), otherwise the bare text as a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{part}` is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) and applies `--set` overrides.
    pub fn from_toml(text: &str, origin: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        // Typed once from the text alone so errors in the file point at its lines.
        let cfg: Config = toml::from_str(text).map_err(parse_err)?;
        if overrides.is_empty() {
            cfg.validate()?;
            return Ok(cfg);
        }
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        for o in overrides {
            set_path(&mut table, o)?;
        }
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Override {
                text: overrides.join(" "),
                message: e.message().to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path, overrides)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.data;
        match (&d.synthetic, &d.train) {
            (None, None) => {
                return Err(invalid(
                    "data.train",
                    "no training data: set data.train or [data.synthetic]",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "data.synthetic",
                    "give either data.train files or [data.synthetic], not both",
                ));
            }
            (Some(s), None) => s
                .validate()
                .map_err(|e| invalid("data.synthetic", e.to_string()))?,
            (None, Some(_)) => {
                if d.dev.is_none() {
                    return Err(invalid(
                        "data.dev",
                        "a dev split is needed for validation and early stopping",
                    ));
                }
            }
        }
        if d.vocab_size < 300 {
            return Err(invalid(
                "data.vocab_size",
                format!(
                    "must be at least 300 (256 byte tokens + 4 specials + merges), got {}",
                    d.vocab_size
                ),
            ));
        }
        if d.max_len == 0 {
            return Err(invalid("data.max_len", "must be positive"));
        }
        let shape = DataShape {
            joint_vocab: d.joint_vocab,
            max_len: Some(d.max_len),
            vocab: None,
        };
        self.model
            .validate(&shape)
            .map_err(|e| invalid(&e.path(), e.message))?;
        if d.tokenizer.is_some() && !d.joint_vocab {
            return Err(invalid(
                "data.tokenizer",
                "a ready tokenizer serves both sides: it needs data.joint_vocab = true",
            ));
        }
        let t = &self.train;
        if t.max_steps == 0 && t.max_epochs == 0 && t.max_minutes <= 0.0 {
            return Err(invalid(
                "train.max_steps",
                "no stopping rule: set train.max_steps, train.max_epochs or train.max_minutes",
            ));
        }
        if t.schedule == ScheduleKind::Cosine && t.max_steps <= t.warmup_steps {
            return Err(invalid(
                "train.schedule",
                format!(
                    "\"cosine\" decays to 0 at train.max_steps = {}, which must exceed train.warmup_steps = {} (lower train.warmup_steps too, or set train.schedule = \"inverse_sqrt\")",
                    t.max_steps, t.warmup_steps
                ),
            ));
        }
        if t.batch_tokens < d.max_len + 1 {
            return Err(invalid(
                "train.batch_tokens",
                format!(
                    "{} cannot hold one pair of data.max_len = {} tokens",
                    t.batch_tokens, d.max_len
                ),
            ));
        }
        if t.max_sentences == 0 {
            return Err(invalid("train.max_sentences", "must be positive"));
        }
        if t.accumulate == 0 {
            return Err(invalid("train.accumulate", "must be at least 1"));
        }
        if t.shards == 0 {
            return Err(invalid("train.shards", "must be at least 1"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(invalid(
                "train.lr",
                format!("must be a positive number, got {}", t.lr),
            ));
        }
        if !(0.0..1.0).contains(&t.adam_beta1) || !(0.0..1.0).contains(&t.adam_beta2) {
            return Err(invalid("train.adam_beta1", "Adam betas must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(invalid(
                "train.label_smoothing",
                format!("must be in [0, 1), got {}", t.label_smoothing),
            ));
        }
        if t.clip_norm < 0.0 || t.weight_decay < 0.0 || t.adam_eps <= 0.0 {
            return Err(invalid(
                "train.clip_norm",
                "clip_norm and weight_decay must be >= 0, adam_eps > 0",
            ));
        }
        if t.valid_beam == Some(0) {
            return Err(invalid("train.valid_beam", "must be at least 1"));
        }
        if t.log_every == 0 {
            return Err(invalid("train.log_every", "must be positive"));
        }
        self.decode
            .check()
            .map_err(|(key, message)| invalid(&format!("decode.{key}"), message))?;
        Ok(())
    }
}
