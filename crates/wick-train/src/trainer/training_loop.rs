//! The training loop, top to bottom: batches of each epoch in a seeded order → gradients of
//! each batch's shards → clip → AdamW, with logging, validation, checkpoints and early stopping
//! at fixed cadences.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use wick_data::batcher::{epoch_seed, token_batches};
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, Example};
use wick_model::Seq2Seq;

use super::{MAX_SKIPPED_IN_A_ROW, PROGRESS_FILE, TrainSummary, Trainer};
use crate::run::memory_mb;
use crate::schedule::learning_rate;
use crate::step::{ShardInput, add_grads, batch_gradients, shard_ranges};

pub(super) fn run_loop(tr: &mut Trainer, train: &[Example]) -> Result<TrainSummary> {
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
    tr.progress
        .start(tr.state.step, (planned > 0).then_some(planned));
    // Loss since the last validation (its `train_loss`) and since the last log line.
    let (mut window_loss, mut window_tokens) = (0.0f64, 0usize);
    let (mut log_loss, mut log_tokens) = (0.0f64, 0usize);
    let mut total_tokens = 0usize;
    let loop_start = Instant::now();
    // A resumed run has validated its checkpoint already.
    let mut last_validated = tr.state.step;
    let mut stop_reason = String::from("max_epochs reached");
    let device = tr.model.device().clone();
    let mut skipped_in_a_row = 0usize;
    let mut last_update_epoch = tr.state.epoch;
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
            if t.max_minutes > 0.0 && tr.train_seconds() >= t.max_minutes * 60.0 {
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
            let mut group_loss: Option<Tensor> = None;
            for shards in &batches {
                let inputs: Vec<ShardInput> = shards.iter().map(ShardInput::from).collect();
                let (g, loss) = batch_gradients(
                    &tr.replicas,
                    &inputs,
                    group_tokens,
                    t.label_smoothing,
                    &vars,
                )?;
                group_loss = Some(match group_loss {
                    Some(acc) => (acc + loss)?,
                    None => loss,
                });
                match &mut grads {
                    None => grads = Some(g),
                    Some(acc) => add_grads(acc, &g, &vars)?,
                }
            }
            let Some(grads) = grads else { continue };
            let step = tr.state.step + 1;
            let lr = learning_rate(t, step);
            let (group_loss, norm) = tr.opt.loss_and_grad_norm(group_loss.as_ref(), &grads)?;
            let norm = (t.clip_norm > 0.0 || t.skip_nonfinite).then_some(norm);
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
                tr.progress.message(&format!(
                    "step {step}: {what}; update skipped (train.skip_nonfinite)"
                ));
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
            last_update_epoch = tr.state.epoch;
            window_loss += group_loss * group_tokens as f64;
            window_tokens += group_tokens;
            log_loss += group_loss * group_tokens as f64;
            log_tokens += group_tokens;
            total_tokens += group_tokens;
            tr.progress.update(step);

            let elapsed = loop_start.elapsed().as_secs_f64();
            let tok_s = total_tokens as f64 / elapsed.max(1e-9);
            if step.is_multiple_of(t.log_every) {
                let train_seconds = tr.train_seconds();
                let left = if t.max_minutes > 0.0 {
                    let secs = (t.max_minutes * 60.0 - train_seconds).max(0.0) as u64;
                    format!(" | time left {}:{:02}", secs / 60, secs % 60)
                } else {
                    String::new()
                };
                // The loss of the updates since the last line.
                let loss = log_loss / log_tokens.max(1) as f64;
                (log_loss, log_tokens) = (0.0, 0);
                let msg = format!(
                    "epoch {} loss {loss:.3} lr {lr:.2e} {tok_s:.0} tgt tok/s{left}",
                    tr.state.epoch + 1,
                );
                tr.progress.log(step, &msg);
                tr.log_progress(&ProgressLine {
                    step,
                    epoch: tr.state.epoch,
                    train_loss: loss,
                    lr,
                    tgt_tokens_per_s: tok_s,
                    train_seconds,
                })?;
            }
            if step.is_multiple_of(validate_every) {
                let train_loss = window_loss / window_tokens.max(1) as f64;
                let v = tr.validate(train_loss, lr, elapsed, tok_s)?;
                last_validated = step;
                tr.progress.message(&format!(
                    "validation step {step}: dev loss {:.3} ppl {:.2} acc {:.1}% BLEU {:.2} chrF {:.2} (best: step {} with BLEU {:.2})",
                    v.dev_loss,
                    v.dev_ppl,
                    100.0 * v.dev_acc,
                    v.dev_bleu,
                    v.dev_chrf,
                    tr.state.best_step.unwrap_or(0),
                    tr.state.best_bleu.unwrap_or(0.0)
                ));
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
    tr.progress.finish();
    let elapsed = loop_start.elapsed().as_secs_f64();
    let tok_s = total_tokens as f64 / elapsed.max(1e-9);
    // The updates since the last progress line, so that the curve reaches the last step.
    if log_tokens > 0 {
        tr.log_progress(&ProgressLine {
            step: tr.state.step,
            epoch: last_update_epoch,
            train_loss: log_loss / log_tokens as f64,
            lr: learning_rate(t, tr.state.step.max(1)),
            tgt_tokens_per_s: tok_s,
            train_seconds: tr.train_seconds(),
        })?;
    }
    if last_validated != tr.state.step {
        let train_loss = window_loss / window_tokens.max(1) as f64;
        let v = tr.validate(
            train_loss,
            learning_rate(t, tr.state.step.max(1)),
            elapsed,
            tok_s,
        )?;
        tr.progress.message(&format!(
            "validation step {}: dev loss {:.3} ppl {:.2} acc {:.1}% BLEU {:.2} chrF {:.2}",
            tr.state.step,
            v.dev_loss,
            v.dev_ppl,
            100.0 * v.dev_acc,
            v.dev_bleu,
            v.dev_chrf
        ));
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

/// One line of `progress.jsonl`: the training curve, every `train.log_every` updates.
#[derive(serde::Serialize)]
struct ProgressLine {
    step: usize,
    epoch: usize,
    /// Mean label-smoothed loss per target token of the updates since the last line.
    train_loss: f64,
    lr: f64,
    /// Target tokens per second of this session so far.
    tgt_tokens_per_s: f64,
    /// Seconds of training of the whole run, across resumes.
    train_seconds: f64,
}

impl Trainer {
    fn log_progress(&self, line: &ProgressLine) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(PROGRESS_FILE))?;
        writeln!(f, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }
}
