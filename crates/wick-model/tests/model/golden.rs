//! Golden values from an independent PyTorch implementation of the same model with the same
//! weights: logits, label-smoothed loss and the gradient of every parameter, on the kernel
//! path and on the forced reference path.
//! The fixtures are written by `scripts/reference/golden_transformer.py` and
//! `scripts/reference/golden_rnn.py` and `golden_conv.py` (PyTorch 2.15); each names its `[model]` table.

use std::collections::HashMap;
use std::path::Path;

use crate::common::device;
use candle_core::{DType, Result, Tensor};
use wick_model::loss::label_smoothed_cross_entropy;
use wick_model::{DropoutRng, ModelConfig, ParamStore, Seq2Seq, VocabSizes};

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

fn check(name: &str) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let meta = header.metadata().clone().expect("fixture metadata");
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device())?;
    // The fixture's `[model]` table (without `arch`: a Transformer).
    let cfg: ModelConfig = serde_json::from_str(&meta["config"]).expect("config");
    let v: usize = meta["vocab"].parse().expect("vocab");
    let eps: f64 = meta["label_smoothing"].parse().expect("label smoothing");
    let params: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("grad.") && !k.starts_with("input.") && !k.starts_with("expected.")
        })
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let store = ParamStore::new(0);
    let model = cfg.build(
        VocabSizes { src: v, tgt: v },
        DropoutRng::new(0),
        store.var_builder(DType::F32, &device()),
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
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let d = max_rel_diff(g, &tensors[&format!("grad.{pname}")]);
        assert!(
            d < 1e-4,
            "{name}: gradient of {pname} differs from PyTorch by {d}"
        );
    }
    Ok(())
}

fn post_norm_all_tied_matches_pytorch() -> Result<()> {
    check("golden_post_tied")
}

fn pre_norm_untied_matches_pytorch() -> Result<()> {
    check("golden_pre_untied")
}

fn post_norm_decoder_tied_matches_pytorch() -> Result<()> {
    check("golden_post_decoder")
}

fn rnn_gru_bahdanau_matches_pytorch() -> Result<()> {
    check("golden_rnn_gru_bahdanau")
}

fn rnn_lstm_bahdanau_matches_pytorch() -> Result<()> {
    check("golden_rnn_lstm_bahdanau")
}

fn rnn_gru_luong_dot_without_input_feeding_matches_pytorch() -> Result<()> {
    check("golden_rnn_gru_luong_dot")
}

fn rnn_lstm_luong_dot_matches_pytorch() -> Result<()> {
    check("golden_rnn_lstm_luong_dot")
}

fn rnn_lstm_luong_general_matches_pytorch() -> Result<()> {
    check("golden_rnn_lstm_luong_general")
}

fn rnn_gru_luong_concat_matches_pytorch() -> Result<()> {
    check("golden_rnn_gru_luong_concat")
}

fn rnn_gru_conditional_matches_pytorch() -> Result<()> {
    check("golden_rnn_gru_conditional")
}

fn rnn_lstm_conditional_matches_pytorch() -> Result<()> {
    check("golden_rnn_lstm_conditional")
}

fn conv_kernel_3_matches_pytorch() -> Result<()> {
    check("golden_conv_k3")
}

fn conv_kernel_5_matches_pytorch() -> Result<()> {
    check("golden_conv_k5")
}

on_both_paths!(
    conv_kernel_3_matches_pytorch,
    conv_kernel_5_matches_pytorch,
    post_norm_all_tied_matches_pytorch,
    pre_norm_untied_matches_pytorch,
    post_norm_decoder_tied_matches_pytorch,
    rnn_gru_bahdanau_matches_pytorch,
    rnn_lstm_bahdanau_matches_pytorch,
    rnn_gru_luong_dot_without_input_feeding_matches_pytorch,
    rnn_lstm_luong_dot_matches_pytorch,
    rnn_lstm_luong_general_matches_pytorch,
    rnn_gru_luong_concat_matches_pytorch,
    rnn_gru_conditional_matches_pytorch,
    rnn_lstm_conditional_matches_pytorch,
);
