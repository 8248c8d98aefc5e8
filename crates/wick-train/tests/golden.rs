//! Golden values from an independent PyTorch implementation of the same model with the same
//! weights: logits, label-smoothed loss and the gradient of every parameter.
//! The fixtures are written by `scripts/reference/golden_transformer.py` (PyTorch 2.15).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use wick_model::{DropoutRng, ParamStore, Seq2Seq, Transformer, TransformerConfig, VocabSizes};
use wick_train::loss::label_smoothed_cross_entropy;

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>());
    let scale = b
        .abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>());
    diff.unwrap_or(f32::INFINITY) / scale.unwrap_or(1.0).max(1.0)
}

fn check(name: &str) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    let (tensors, meta) = wick_train::checkpoint::load(&path, &Device::Cpu)?;
    let cfg: TransformerConfig = serde_json::from_str(&meta["config"])?;
    let v: usize = meta["vocab"].parse()?;
    let eps: f64 = meta["label_smoothing"].parse()?;
    let params: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("grad.") && !k.starts_with("input.") && !k.starts_with("expected.")
        })
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let store = ParamStore::new(0);
    let model = Transformer::new(
        &cfg,
        VocabSizes { src: v, tgt: v },
        DropoutRng::new(0),
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    store.load(&params)?;

    let ids = |k: &str| tensors[k].to_dtype(DType::U32);
    let (src, tgt_in, tgt_out) = (
        ids("input.src")?,
        ids("input.tgt_in")?,
        ids("input.tgt_out")?,
    );
    let (src_mask, tgt_mask) = (&tensors["input.src_mask"], &tensors["input.tgt_mask"]);
    let memory = model.encode(&src, src_mask, true)?;
    let logits = model.forward_t(&memory, &tgt_in, true)?;
    let d = max_rel_diff(&logits, &tensors["expected.logits"]);
    assert!(d < 2e-5, "{name}: logits differ from PyTorch by {d}");

    let n_tokens = tgt_mask.sum_all()?.to_scalar::<f32>()? as f64;
    let sums = label_smoothed_cross_entropy(&logits, &tgt_out, tgt_mask, eps)?;
    let loss = (sums.smoothed / n_tokens)?;
    let expected = tensors["expected.loss"].to_vec1::<f32>()?[0];
    let got = loss.to_scalar::<f32>()?;
    assert!(
        (got - expected).abs() < 1e-5,
        "{name}: loss {got} vs PyTorch {expected}"
    );

    let grads = loss.backward()?;
    for (pname, var) in store.vars() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{name}: no gradient for {pname}"))?;
        let d = max_rel_diff(g, &tensors[&format!("grad.{pname}")]);
        assert!(
            d < 1e-4,
            "{name}: gradient of {pname} differs from PyTorch by {d}"
        );
    }
    Ok(())
}

#[test]
fn post_norm_all_tied_matches_pytorch() -> anyhow::Result<()> {
    check("golden_post_tied")
}

#[test]
fn pre_norm_untied_matches_pytorch() -> anyhow::Result<()> {
    check("golden_pre_untied")
}

#[test]
fn post_norm_decoder_tied_matches_pytorch() -> anyhow::Result<()> {
    check("golden_post_decoder")
}
