//! Validation on the dev split: teacher-forced loss, perplexity and accuracy, then BLEU and
//! chrF of translations; the figures go to `metrics.jsonl` and pick the best checkpoint.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use wick_data::batcher::token_batches;
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, Example, Pair};
use wick_metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};
use wick_model::{Model, Seq2Seq};

use super::Trainer;
use super::checkpoints::kept_checkpoints;
use crate::checkpoint;
use crate::config::{BestMetric, Config, DecodeConfig};
use crate::run::{CheckpointEntry, Tokenizers};
use crate::step::{ShardInput, loss_sums};
use crate::translator::Translator;

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
    /// Seconds since this session's training loop started.
    pub elapsed_s: f64,
    /// Seconds of training of the whole run, across resumes (what `train.max_minutes`
    /// counts).
    pub train_seconds: f64,
    pub tgt_tokens_per_s: f64,
}

/// Teacher-forced loss, perplexity and token accuracy on `examples` (no dropout, no graph).
pub fn evaluate_loss(model: &Model, examples: &[Example], cfg: &Config) -> Result<(f64, f64, f64)> {
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

/// Translates the sources (with the model laid out for decoding anew; beam
/// `train.valid_beam`, else `decode.beam`) and scores them against the references.
pub fn bleu_chrf(
    model: &Model,
    tok: &Tokenizers,
    cfg: &Config,
    pairs: &[Pair],
) -> Result<(f64, f64, Vec<String>)> {
    let sources: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
    let refs = vec![pairs.iter().map(|p| p.tgt.clone()).collect::<Vec<_>>()];
    let decode = DecodeConfig {
        beam: cfg.train.valid_beam.unwrap_or(cfg.decode.beam),
        n_best: 1,
        ..cfg.decode.clone()
    };
    let translator = Translator::from_model(model, tok.clone(), decode)?;
    let hyps = translator.translate(&sources)?;
    let bleu = corpus_bleu(&hyps, &refs, BleuOptions::default()).score;
    let chrf = corpus_chrf(&hyps, &refs, ChrfOptions::default()).score;
    Ok((bleu, chrf, hyps))
}

impl Trainer {
    pub(super) fn validate(
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
            train_seconds: self.train_seconds(),
            tgt_tokens_per_s: tokens_per_s,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(super::METRICS_FILE))?;
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
