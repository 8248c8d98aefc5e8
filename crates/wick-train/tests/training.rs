//! Training behaviour: overfitting one batch, and a whole `wick train` run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device};
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, Example};
use wick_model::loss::label_smoothed_cross_entropy;
use wick_model::{DropoutRng, Model, ModelConfig, ParamStore, Seq2Seq, VocabSizes, ops};
use wick_train::optim::AdamW;

/// A Transformer of `d_model` 64 over a vocabulary of 40, seeded.
fn small_model(dropout: f32) -> anyhow::Result<(Model, ParamStore)> {
    let cfg = ModelConfig::parse(&format!(
        "d_model = 64\nn_heads = 4\nencoder_layers = 2\ndecoder_layers = 2\nd_ff = 128\n\
         dropout = {dropout}\nnorm = \"post\"\ntie_embeddings = \"all\"\nmax_positions = 32"
    ))?;
    let store = ParamStore::new(1);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let model = cfg.build(VocabSizes { src: 40, tgt: 40 }, DropoutRng::new(2), vb)?;
    Ok((model, store))
}

/// Eight sentence pairs of different lengths over ids 4..40.
fn examples() -> Vec<Example> {
    (0..8)
        .map(|i| Example {
            id: i,
            src: (0..(3 + i % 5))
                .map(|j| 4 + ((i * 7 + j * 3) % 36) as u32)
                .collect(),
            tgt: (0..(2 + i % 6))
                .map(|j| 4 + ((i * 5 + j * 11) % 36) as u32)
                .collect(),
        })
        .collect()
}

#[test]
fn overfits_one_batch() -> anyhow::Result<()> {
    let (model, store) = small_model(0.0)?;
    let mut opt = AdamW::new(store.vars(), 0.9, 0.98, 1e-9, 0.0)?;
    let examples = examples();
    let batch = Batch::new(&examples.iter().collect::<Vec<_>>(), SPECIALS, &Device::Cpu)?;
    let mut first = None;
    let mut last = f32::INFINITY;
    for step in 1..=300 {
        let memory = model.encode(&batch.source.src, &batch.source.src_mask, true)?;
        let logits = model.forward_t(&memory, &batch.tgt_in, true)?;
        let sums = label_smoothed_cross_entropy(&logits, &batch.tgt_out, &batch.tgt_mask, 0.0)?;
        let loss = (sums.smoothed / batch.n_tgt_tokens as f64)?;
        last = loss.to_scalar::<f32>()?;
        first.get_or_insert(last);
        let grads = loss.backward()?;
        opt.step(&grads, 3e-3 * (step as f64 / 30.0).min(1.0), 1.0)?;
        if last < 0.01 {
            break;
        }
    }
    assert!(
        first.unwrap_or(0.0) > 3.0,
        "initial loss {first:?} should be near ln(40)"
    );
    assert!(last < 0.02, "could not overfit one batch: loss {last}");
    Ok(())
}

/// Losses and final weights of `steps` AdamW updates with dropout, on the current path.
fn train_steps(steps: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let (model, store) = small_model(0.1)?;
    let mut opt = AdamW::new(store.vars(), 0.9, 0.98, 1e-9, 0.01)?;
    let examples = examples();
    let batch = Batch::new(&examples.iter().collect::<Vec<_>>(), SPECIALS, &Device::Cpu)?;
    let mut losses = Vec::new();
    for step in 1..=steps {
        let memory = model.encode(&batch.source.src, &batch.source.src_mask, true)?;
        let logits = model.forward_t(&memory, &batch.tgt_in, true)?;
        let sums = label_smoothed_cross_entropy(&logits, &batch.tgt_out, &batch.tgt_mask, 0.1)?;
        let loss = (sums.smoothed / batch.n_tgt_tokens as f64)?;
        losses.push(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        let norm = opt.grad_norm(&grads)?;
        opt.step(
            &grads,
            2e-3 * step as f64 / steps as f64,
            (1.0 / norm).min(1.0),
        )?;
    }
    let w = store.tensors()["encoder.layers.0.ffn.fc1.weight"]
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((losses, w))
}

/// The same training steps on the kernel path and on the forced reference path (the
/// composed Candle ops a GPU runs, with the composed AdamW): the same dropout masks, so the
/// two differ only by float rounding. Tolerance: 1e-4 relative on every loss of 20 steps and
/// on the trained weights (measured: ~1e-6).
#[test]
fn training_steps_on_the_reference_path_match_the_kernels() -> anyhow::Result<()> {
    let (losses_k, w_k) = train_steps(20)?;
    let (losses_r, w_r) = ops::with_reference_ops(|| train_steps(20))?;
    for (step, (k, r)) in losses_k.iter().zip(&losses_r).enumerate() {
        assert!(
            (k - r).abs() <= 1e-4 * k.abs(),
            "step {step}: loss {k} vs {r}"
        );
    }
    assert!(
        losses_k[19] < losses_k[0] - 0.5,
        "the loss fell: {losses_k:?}"
    );
    let scale = w_k.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = w_k
        .iter()
        .zip(&w_r)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "weights differ by {diff} (largest {scale})"
    );
    Ok(())
}

#[test]
fn schedule_warms_up_then_decays() {
    let cfg = wick_train::config::TrainConfig {
        lr: 1e-3,
        warmup_steps: 100,
        ..Default::default()
    };
    let lr = |s| wick_train::schedule::learning_rate(&cfg, s);
    assert!((lr(1) - 1e-5).abs() < 1e-12);
    assert!((lr(50) - 5e-4).abs() < 1e-12);
    assert!((lr(100) - 1e-3).abs() < 1e-12);
    assert!((lr(400) - 5e-4).abs() < 1e-12);
}

#[test]
fn cosine_schedule_anneals_to_zero_at_max_steps() {
    let cfg = wick_train::config::TrainConfig {
        lr: 1e-3,
        warmup_steps: 100,
        max_steps: 1100,
        schedule: wick_train::config::ScheduleKind::Cosine,
        ..Default::default()
    };
    let lr = |s| wick_train::schedule::learning_rate(&cfg, s);
    assert!((lr(50) - 5e-4).abs() < 1e-12);
    assert!((lr(100) - 1e-3).abs() < 1e-12);
    assert!((lr(600) - 5e-4).abs() < 1e-9);
    assert!(lr(1100).abs() < 1e-12);
    assert!(lr(1000) > lr(1050));
}
