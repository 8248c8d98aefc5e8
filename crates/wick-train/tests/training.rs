//! Training behaviour: overfitting one batch, and a whole `wick train` run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device};
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, Example};
use wick_model::{
    DropoutRng, NormPosition, ParamStore, Seq2Seq, Transformer, TransformerConfig, Tying,
    VocabSizes,
};
use wick_train::loss::label_smoothed_cross_entropy;
use wick_train::optim::AdamW;

#[test]
fn overfits_one_batch() -> anyhow::Result<()> {
    let cfg = TransformerConfig {
        d_model: 64,
        n_heads: 4,
        encoder_layers: 2,
        decoder_layers: 2,
        d_ff: 128,
        dropout: 0.0,
        norm: NormPosition::Post,
        tie_embeddings: Tying::All,
        max_positions: 32,
        ..Default::default()
    };
    let v = 40;
    let store = ParamStore::new(1);
    let model = Transformer::new(
        &cfg,
        VocabSizes { src: v, tgt: v },
        DropoutRng::new(2),
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    let mut opt = AdamW::new(store.vars(), 0.9, 0.98, 1e-9, 0.0)?;
    let examples: Vec<Example> = (0..8)
        .map(|i| Example {
            id: i,
            src: (0..(3 + i % 5))
                .map(|j| 4 + ((i * 7 + j * 3) % 36) as u32)
                .collect(),
            tgt: (0..(2 + i % 6))
                .map(|j| 4 + ((i * 5 + j * 11) % 36) as u32)
                .collect(),
        })
        .collect();
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
