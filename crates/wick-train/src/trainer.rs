//! The training loop: batches → label-smoothed loss → backward → clip → AdamW, with
//! validation, checkpoints and early stopping at fixed cadences.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use wick_data::batcher::{epoch_seed, token_batches};
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, Example, Pair};
use wick_model::{DropoutRng, ParamStore, Transformer};

use crate::checkpoint;
use crate::config::{BestMetric, Config};
use crate::metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};
use crate::optim::AdamW;
use crate::prepare::{
    Split, drop_overlong, encode_pairs, load_split, load_split_reporting, train_tokenizers,
};
use crate::run::{
    BestCheckpoint, CheckpointEntry, CheckpointIndex, Tokenizers, TrainerState, frozen_model,
    git_commit, memory_mb, sha256_file,
};
use crate::schedule::learning_rate;
use crate::step::{ShardInput, add_grads, batch_gradients, loss_sums, replicas, shard_ranges};
use crate::translate::translate;

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

/// Dev-set figures of one validation.
#[derive(Clone, Debug, Serialize)]
pub struct Validation {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_ppl: f64,
    pub dev_acc: f64,
    pub dev_bleu: f64,
    pub dev_chrf: f64,
    pub elapsed_s: f64,
    pub tgt_tokens_per_s: f64,
}

/// Prints above the progress bar, or to stderr when the bar is hidden (not a terminal).
fn log(pb: &ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        pb.println(msg.as_ref());
    }
}

/// Teacher-forced loss, perplexity and token accuracy on `examples` (no dropout, no graph).
pub fn evaluate_loss(
    model: &Transformer,
    examples: &[Example],
    cfg: &Config,
) -> Result<(f64, f64, f64)> {
    let lengths: Vec<(usize, usize)> = examples
        .iter()
        .map(|e| (e.src_len(), e.tgt_len()))
        .collect();
    let batches = token_batches(
        &lengths,
        cfg.train.batch_tokens,
        cfg.train.max_sentences,
        None,
    )?;
    let (mut loss, mut nll, mut correct, mut tokens) = (0.0, 0.0, 0.0, 0usize);
    for rows in batches {
        let refs: Vec<&Example> = rows.iter().map(|&i| &examples[i]).collect();
        let batch = Batch::new(&refs, SPECIALS, model.device())?;
        let sums = loss_sums(
            model,
            &ShardInput::from(&batch),
            false,
            cfg.train.label_smoothing,
        )?;
        loss += sums.smoothed.to_scalar::<f32>()? as f64;
        nll += sums.nll.to_scalar::<f32>()? as f64;
        correct += sums.correct.to_scalar::<f32>()? as f64;
        tokens += batch.n_tgt_tokens;
    }
    let n = tokens.max(1) as f64;
    Ok((loss / n, (nll / n).exp(), correct / n))
}

/// Translates the sources and scores them against the references.
pub fn bleu_chrf(
    model: &Transformer,
    tok: &Tokenizers,
    cfg: &Config,
    pairs: &[Pair],
) -> Result<(f64, f64, Vec<String>)> {
    let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
    let refs = vec![pairs.iter().map(|p| p.tgt.clone()).collect::<Vec<_>>()];
    let hyps = translate(model, tok, &cfg.decode, &sources)?;
    let bleu = corpus_bleu(&hyps, &refs, BleuOptions::default()).score;
    let chrf = corpus_chrf(&hyps, &refs, ChrfOptions::default()).score;
    Ok((bleu, chrf, hyps))
}

#[derive(Serialize)]
struct Manifest {
    wick_version: &'static str,
    git_commit: Option<String>,
    seed: u64,
    device: String,
    config_source: String,
    data: Vec<DataFile>,
    synthetic: Option<String>,
    train_pairs: usize,
    /// Training pairs dropped for being longer than `data.max_len` tokens.
    train_pairs_dropped: usize,
    /// Lines dropped under `data.on_bad_line = "skip"`, with file, line and reason.
    bad_lines: Vec<wick_data::BadLine>,
    dev_pairs: usize,
    vocab_src: usize,
    vocab_tgt: usize,
    params: usize,
    created_unix: u64,
}

#[derive(Serialize)]
struct DataFile {
    split: &'static str,
    path: String,
    sha256: String,
}

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

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    checkpoint::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// Everything a training needs besides the config.
pub struct TrainRequest {
    pub config: Config,
    /// Where the config came from (a path or "embedded default"), for the manifest.
    pub config_source: String,
    pub run_dir: PathBuf,
    pub device: Device,
}

/// Consecutive skipped updates (`train.skip_nonfinite`) after which training gives up.
const MAX_SKIPPED_IN_A_ROW: usize = 10;

/// The file `wick train --resume` continues from.
pub const RESUME_FILE: &str = "resume.safetensors";
const OPTIM_PREFIX: &str = "optim.";

struct Trainer {
    cfg: Config,
    dir: PathBuf,
    tok: Tokenizers,
    store: ParamStore,
    model: Transformer,
    /// `model` and the replicas that run a batch's other shards (`crate::step`): the same
    /// parameters, their own dropout streams.
    replicas: Vec<Transformer>,
    /// Same weights as `model`, detached: validation builds no autograd graph.
    eval_model: Transformer,
    opt: AdamW,
    state: TrainerState,
    dev_pairs: Vec<Pair>,
    dev_examples: Vec<Example>,
    /// Training time of earlier sessions of this run, and when this one started.
    prior_elapsed: f64,
    started: Instant,
}

impl Trainer {
    /// A fresh model (seeded by `train.seed`) and optimizer for `cfg`.
    fn new(
        cfg: Config,
        dir: PathBuf,
        tok: Tokenizers,
        dev_pairs: Vec<Pair>,
        dev_examples: Vec<Example>,
        device: &Device,
    ) -> Result<Self> {
        let vocab = tok.vocab_sizes();
        let store = ParamStore::new(cfg.train.seed);
        let dropout_rng = DropoutRng::new(epoch_seed(cfg.train.seed, usize::MAX));
        let model = Transformer::new(
            &cfg.model,
            vocab,
            dropout_rng,
            store.var_builder(DType::F32, device),
        )?;
        let eval_model = frozen_model(&cfg, vocab, &store, device)?;
        let replicas = replicas(&model, &cfg.model, &store, device, cfg.train.shards)?;
        let t = &cfg.train;
        let opt = AdamW::new(
            store.vars(),
            t.adam_beta1,
            t.adam_beta2,
            t.adam_eps,
            t.weight_decay,
        )?;
        eprintln!(
            "model: {} parameters in {} tensors, device {:?}",
            store.n_params(),
            store.len(),
            device
        );
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
        })
    }

    fn metadata(&self, dev_bleu: Option<f64>) -> HashMap<String, String> {
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
    fn save(&mut self, name: &str, dev_bleu: Option<f64>) -> Result<()> {
        self.state.elapsed_seconds = self.prior_elapsed + self.started.elapsed().as_secs_f64();
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

    fn validate(
        &mut self,
        train_loss: f64,
        lr: f64,
        elapsed: f64,
        tokens_per_s: f64,
    ) -> Result<Validation> {
        let (dev_loss, dev_ppl, dev_acc) =
            evaluate_loss(&self.eval_model, &self.dev_examples, &self.cfg)?;
        let limit = match self.cfg.train.valid_max_sentences {
            0 => self.dev_pairs.len(),
            n => n.min(self.dev_pairs.len()),
        };
        let (dev_bleu, dev_chrf, _) = bleu_chrf(
            &self.eval_model,
            &self.tok,
            &self.cfg,
            &self.dev_pairs[..limit],
        )?;
        let v = Validation {
            step: self.state.step,
            epoch: self.state.epoch,
            lr,
            train_loss,
            dev_loss,
            dev_ppl,
            dev_acc,
            dev_bleu,
            dev_chrf,
            elapsed_s: elapsed,
            tgt_tokens_per_s: tokens_per_s,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("metrics.jsonl"))?;
        writeln!(f, "{}", serde_json::to_string(&v)?)?;
        // Both metrics are kept as "higher is better" so one comparison serves.
        let figure = match self.cfg.train.best_metric {
            BestMetric::Bleu => dev_bleu,
            BestMetric::Loss => -dev_loss,
        };
        if self.cfg.train.keep_best + self.cfg.train.keep_last > 0 {
            let file = format!("step-{}.safetensors", self.state.step);
            checkpoint::save(
                &self.dir.join("checkpoints").join(&file),
                &self.store.tensors(),
                self.metadata(Some(dev_bleu)),
            )?;
            // A redone validation (after a resume) replaces its earlier entry.
            self.state.checkpoints.retain(|c| c.step != self.state.step);
            self.state.checkpoints.push(CheckpointEntry {
                file,
                step: self.state.step,
                epoch: self.state.epoch,
                dev_bleu,
                dev_loss,
                score: figure,
            });
            self.state.checkpoints = kept_checkpoints(
                &self.state.checkpoints,
                self.cfg.train.keep_best,
                self.cfg.train.keep_last,
            );
        }
        if self.state.best_score.is_none_or(|b| figure > b) {
            self.state.best_score = Some(figure);
            self.state.best_bleu = Some(dev_bleu);
            self.state.best_step = Some(self.state.step);
            self.state.bad_validations = 0;
            self.save("best.safetensors", Some(dev_bleu))?;
        } else {
            self.state.bad_validations += 1;
        }
        Ok(v)
    }
}

/// Runs a whole training as configured.
pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    let TrainRequest {
        config: cfg,
        config_source,
        run_dir: dir,
        device,
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
    eprintln!(
        "data: {} train pairs ({} dropped: longer than data.max_len = {} tokens), {} dev pairs; vocabulary {} / {}{}",
        train_examples.len(),
        dropped,
        cfg.data.max_len,
        dev_pairs.len(),
        tok.src.vocab_size(),
        tok.tgt.vocab_size(),
        if tok.joint { " (joint)" } else { "" }
    );

    let vocab = tok.vocab_sizes();
    let mut tr = Trainer::new(
        cfg.clone(),
        dir.clone(),
        tok,
        dev_pairs,
        dev_examples,
        &device,
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

fn run_loop(tr: &mut Trainer, train: &[Example]) -> Result<TrainSummary> {
    let cfg = tr.cfg.clone();
    let t = &cfg.train;
    let lengths: Vec<(usize, usize)> = train.iter().map(|e| (e.src_len(), e.tgt_len())).collect();
    let batches_per_epoch =
        token_batches(&lengths, t.batch_tokens, t.max_sentences, Some(0))?.len();
    let steps_per_epoch = batches_per_epoch.div_ceil(t.accumulate);
    let vars: Vec<Var> = tr.store.vars().into_iter().map(|(_, v)| v).collect();
    let planned = match (t.max_steps, t.max_epochs) {
        (0, e) => e * steps_per_epoch,
        (s, 0) => s,
        (s, e) => s.min(e * steps_per_epoch),
    };
    let validate_every = if t.validate_every > 0 {
        t.validate_every
    } else {
        steps_per_epoch
    };
    // Runs bounded only by time have no step count to show progress against.
    let (pb, template, of_planned) = if planned > 0 {
        (
            ProgressBar::new(planned as u64),
            "{spinner} step {pos}/{len} [{elapsed_precise} < {eta_precise}] {wide_bar} {msg}",
            format!("/{planned}"),
        )
    } else {
        (
            ProgressBar::no_length(),
            "{spinner} step {pos} [{elapsed_precise}] {msg}",
            String::new(),
        )
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut window_loss, mut window_tokens) = (0.0f64, 0usize);
    let mut total_tokens = 0usize;
    let loop_start = Instant::now();
    // A resumed run has validated its checkpoint already.
    let mut last_validated = tr.state.step;
    let mut stop_reason = String::from("max_epochs reached");
    let device = tr.model.device().clone();
    let mut skipped_in_a_row = 0usize;
    'epochs: loop {
        if t.max_epochs > 0 && tr.state.epoch >= t.max_epochs {
            break;
        }
        let order = token_batches(
            &lengths,
            t.batch_tokens,
            t.max_sentences,
            Some(epoch_seed(t.seed, tr.state.epoch)),
        )?;
        let skip = std::mem::take(&mut tr.state.groups_done_in_epoch);
        for (g, group) in order.chunks(t.accumulate).enumerate().skip(skip) {
            if t.max_steps > 0 && tr.state.step >= t.max_steps {
                stop_reason = format!("max_steps = {} reached", t.max_steps);
                break 'epochs;
            }
            if t.max_minutes > 0.0
                && tr.prior_elapsed + tr.started.elapsed().as_secs_f64() >= t.max_minutes * 60.0
            {
                stop_reason = format!("max_minutes = {} reached", t.max_minutes);
                break 'epochs;
            }
            // One update: gradients of every batch in the group, summed, normalised by the
            // group's target tokens. Each batch runs as shards of its sentences, side by side.
            let batches = group
                .iter()
                .map(|rows| {
                    let lengths: Vec<usize> = rows.iter().map(|&i| train[i].tgt_len()).collect();
                    shard_ranges(&lengths, tr.replicas.len())
                        .into_iter()
                        .map(|range| {
                            let examples: Vec<&Example> =
                                rows[range].iter().map(|&i| &train[i]).collect();
                            Batch::new(&examples, SPECIALS, &device)
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let group_tokens: usize = batches.iter().flatten().map(|b| b.n_tgt_tokens).sum();
            let mut grads: Option<GradStore> = None;
            let mut group_loss = 0.0;
            for shards in &batches {
                let inputs: Vec<ShardInput> = shards.iter().map(ShardInput::from).collect();
                let (g, loss) = batch_gradients(
                    &tr.replicas,
                    &inputs,
                    group_tokens,
                    t.label_smoothing,
                    &vars,
                )?;
                group_loss += loss;
                match &mut grads {
                    None => grads = Some(g),
                    Some(acc) => add_grads(acc, &g, &vars)?,
                }
            }
            let Some(grads) = grads else { continue };
            let step = tr.state.step + 1;
            let lr = learning_rate(t, step);
            let norm = if t.clip_norm > 0.0 || t.skip_nonfinite {
                Some(tr.opt.grad_norm(&grads)?)
            } else {
                None
            };
            if !group_loss.is_finite() || norm.is_some_and(|n| !n.is_finite()) {
                let what = if group_loss.is_finite() {
                    format!("the gradient norm became {}", norm.unwrap_or(f64::NAN))
                } else {
                    format!("the training loss became {group_loss}")
                };
                if !t.skip_nonfinite {
                    bail!(
                        "{what} at step {step}; stopped without saving, so the last good checkpoint in {} is intact (set train.skip_nonfinite = true to skip such updates, or lower train.lr)",
                        tr.dir.join("checkpoints").display()
                    )
                }
                skipped_in_a_row += 1;
                tr.state.skipped_updates += 1;
                tr.state.groups_done_in_epoch = g + 1;
                log(
                    &pb,
                    format!("step {step}: {what}; update skipped (train.skip_nonfinite)"),
                );
                if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
                    bail!(
                        "{MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss or gradient (last at step {step}); the model has diverged. The last good checkpoint in {} is intact.",
                        tr.dir.join("checkpoints").display()
                    )
                }
                continue;
            }
            skipped_in_a_row = 0;
            let scale = match norm {
                Some(n) if t.clip_norm > 0.0 && n > t.clip_norm => t.clip_norm / (n + 1e-6),
                _ => 1.0,
            };
            tr.opt.step(&grads, lr, scale)?;
            tr.state.step = step;
            tr.state.groups_done_in_epoch = g + 1;
            window_loss += group_loss * group_tokens as f64;
            window_tokens += group_tokens;
            total_tokens += group_tokens;
            pb.inc(1);

            let elapsed = loop_start.elapsed().as_secs_f64();
            let tok_s = total_tokens as f64 / elapsed.max(1e-9);
            if step.is_multiple_of(t.log_every) {
                let left = if t.max_minutes > 0.0 {
                    let secs = (t.max_minutes * 60.0
                        - (tr.prior_elapsed + tr.started.elapsed().as_secs_f64()))
                    .max(0.0) as u64;
                    format!(" | time left {}:{:02}", secs / 60, secs % 60)
                } else {
                    String::new()
                };
                let msg = format!(
                    "epoch {} loss {:.3} lr {lr:.2e} {tok_s:.0} tgt tok/s{left}",
                    tr.state.epoch + 1,
                    window_loss / window_tokens.max(1) as f64
                );
                pb.set_message(msg.clone());
                if pb.is_hidden() {
                    eprintln!("step {step}{of_planned} {msg}");
                }
            }
            if step.is_multiple_of(validate_every) {
                let train_loss = window_loss / window_tokens.max(1) as f64;
                let v = tr.validate(train_loss, lr, elapsed, tok_s)?;
                last_validated = step;
                log(
                    &pb,
                    format!(
                        "validation step {step}: dev loss {:.3} ppl {:.2} acc {:.1}% BLEU {:.2} chrF {:.2} (best: step {} with BLEU {:.2})",
                        v.dev_loss,
                        v.dev_ppl,
                        100.0 * v.dev_acc,
                        v.dev_bleu,
                        v.dev_chrf,
                        tr.state.best_step.unwrap_or(0),
                        tr.state.best_bleu.unwrap_or(0.0)
                    ),
                );
                (window_loss, window_tokens) = (0.0, 0);
                tr.save("last.safetensors", Some(v.dev_bleu))?;
                if t.patience > 0 && tr.state.bad_validations >= t.patience {
                    stop_reason = format!(
                        "early stop: dev {:?} did not improve for {} validations",
                        t.best_metric, t.patience
                    );
                    break 'epochs;
                }
            } else if t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every) {
                tr.save("last.safetensors", None)?;
            }
        }
        tr.state.epoch += 1;
        tr.state.groups_done_in_epoch = 0;
    }
    pb.finish_and_clear();
    let elapsed = loop_start.elapsed().as_secs_f64();
    let tok_s = total_tokens as f64 / elapsed.max(1e-9);
    if last_validated != tr.state.step {
        let train_loss = window_loss / window_tokens.max(1) as f64;
        let v = tr.validate(
            train_loss,
            learning_rate(t, tr.state.step.max(1)),
            elapsed,
            tok_s,
        )?;
        eprintln!(
            "validation step {}: dev loss {:.3} ppl {:.2} acc {:.1}% BLEU {:.2} chrF {:.2}",
            tr.state.step,
            v.dev_loss,
            v.dev_ppl,
            100.0 * v.dev_acc,
            v.dev_bleu,
            v.dev_chrf
        );
    }
    tr.state.finished = true;
    tr.save("last.safetensors", None)?;
    Ok(TrainSummary {
        run_dir: tr.dir.clone(),
        steps: tr.state.step,
        epochs: tr.state.epoch,
        best_dev_bleu: tr.state.best_bleu,
        best_step: tr.state.best_step,
        seconds: tr.state.elapsed_seconds,
        tgt_tokens_per_s: tok_s,
        peak_rss_mb: memory_mb().0,
        stop_reason,
    })
}

/// What `wick train --resume` needs.
pub struct ResumeRequest {
    pub run_dir: PathBuf,
    /// `--set` overrides on top of the run's config; `[model]` and `[data]` cannot change.
    pub overrides: Vec<String>,
    pub device: Device,
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
    // Validations logged after the resume point (by a session that was killed) are redone.
    let metrics = dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&metrics) {
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
        checkpoint::write_atomic(&metrics, kept.as_bytes())?;
    }
    tr.state = TrainerState {
        finished: false,
        ..state
    };
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    eprintln!(
        "resuming {} at step {} (epoch {})",
        dir.display(),
        tr.state.step,
        tr.state.epoch + 1
    );
    run_loop(&mut tr, &train_examples)
}
