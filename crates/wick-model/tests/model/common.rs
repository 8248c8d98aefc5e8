//! Helpers shared by the model tests.
//!
//! The device comes from `WICK_TEST_DEVICE` (`cpu`, the default, or `cuda[:N]`, `metal`), so
//! that one test executable checks a GPU build on a GPU machine (`scripts/gpu_check.sh`).

#![allow(dead_code, unused_macros)]

use candle_core::{DType, Device, Result, Tensor, Var};
use wick_model::transformer::{NormPosition, Transformer, TransformerConfig, Tying};
use wick_model::{DropoutRng, ParamStore, VocabSizes};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

/// The device the tests run on: `WICK_TEST_DEVICE`, default the CPU.
pub fn device() -> Device {
    let spec = std::env::var("WICK_TEST_DEVICE").unwrap_or_default();
    let spec = spec.trim();
    let ordinal = |rest: &str| rest.strip_prefix(':').map_or(Ok(0), str::parse::<usize>);
    match spec {
        "" | "cpu" => Device::Cpu,
        "metal" => Device::new_metal(0).expect("WICK_TEST_DEVICE=metal: no Metal device"),
        s if s.starts_with("cuda") => {
            let n = ordinal(&s[4..]).expect("WICK_TEST_DEVICE: expected cuda or cuda:N");
            Device::new_cuda(n).expect("WICK_TEST_DEVICE=cuda: no CUDA device")
        }
        other => panic!("WICK_TEST_DEVICE={other}: expected cpu, cuda, cuda:N or metal"),
    }
}

/// Defines each named test body (a `fn NAME() -> Result<()>` in the calling file) as two
/// tests: `kernels::NAME` (wick's CPU kernels where the device has them) and
/// `reference::NAME`, under the forced reference path — the composed Candle ops a GPU runs,
/// with every kernel call refused.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod kernels {
            $(
                #[test]
                fn $name() -> candle_core::Result<()> {
                    super::$name()
                }
            )*
        }
        mod reference {
            $(
                #[test]
                fn $name() -> candle_core::Result<()> {
                    wick_model::ops::with_reference_ops(super::$name)
                }
            )*
        }
    };
}

pub fn tiny_config(norm: NormPosition, tie: Tying) -> TransformerConfig {
    TransformerConfig {
        d_model: 32,
        n_heads: 4,
        encoder_layers: 2,
        decoder_layers: 2,
        d_ff: 48,
        dropout: 0.1,
        attention_dropout: 0.1,
        activation_dropout: 0.1,
        norm,
        tie_embeddings: tie,
        max_positions: 64,
        layer_norm_eps: 1e-5,
    }
}

pub const VOCAB: VocabSizes = VocabSizes { src: 29, tgt: 29 };

pub fn build(cfg: &TransformerConfig, seed: u64) -> Result<(Transformer, ParamStore)> {
    let store = ParamStore::new(seed);
    let model = Transformer::new(
        cfg,
        VOCAB,
        DropoutRng::new(seed + 1),
        store.var_builder(DType::F32, &device()),
    )?;
    Ok((model, store))
}

/// Rows padded with `fill` to the longest row, and their `{1, 0}` mask.
pub fn padded(rows: &[Vec<u32>], fill: u32) -> Result<(Tensor, Tensor)> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        for j in 0..len {
            ids.push(*r.get(j).unwrap_or(&fill));
            mask.push(if j < r.len() { 1f32 } else { 0.0 });
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), len), &device())?,
        Tensor::from_vec(mask, (rows.len(), len), &device())?,
    ))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Every configuration the invariance tests run over.
pub fn all_configs() -> Vec<TransformerConfig> {
    let mut out = Vec::new();
    for norm in [NormPosition::Post, NormPosition::Pre] {
        for tie in [Tying::None, Tying::Decoder, Tying::All] {
            out.push(tiny_config(norm, tie));
        }
    }
    out
}

/// A deterministic pseudo-random `shape` in [-2, 2) on the CPU (xorshift), so failures
/// reproduce.
pub fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Forward outputs and input gradients of `f` under a random linear functional of its output.
pub fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    seed: u64,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let probe = randn(out.dims(), seed)?;
    let grads = (&out * &probe)?.sum_all()?.backward()?;
    let gs = ts
        .iter()
        .map(|t| {
            grads
                .get(t)
                .cloned()
                .unwrap_or(t.zeros_like()?)
                .contiguous()
        })
        .collect::<Result<_>>()?;
    Ok((out, gs))
}
