//! `wick-kernels`: wick's CPU fast path.
//!
//! Composed from Candle's primitives, a small model's training step and decoding step spend
//! most of their time allocating and walking intermediate buffers, one per op. The kernels
//! here do the hot parts of the Transformer in one pass each, forward and backward, as
//! Candle custom ops on CPU `f32` tensors:
//!
//! | module | what it computes |
//! |---|---|
//! | [`gemm`] | matrix products on the `gemm` crate, split by rows or columns per thread; transposes |
//! | [`panel`] | products with weights packed once into panels (inference) |
//! | [`int8`] | products on int8 weights with inputs quantized per row, on VNNI (inference) |
//! | [`affine`] | `x·Wᵀ + b`, optionally with ReLU and a dropout mask, one autograd node |
//! | [`attention`] | softmax(Q·Kᵀ/√d_k + bias)·V for every head, with its backward |
//! | [`rows`] | softmax, log-softmax and argmax over the last dimension |
//! | [`layer_norm`] | layer normalisation with its backward |
//! | [`cross_entropy`] | label-smoothed cross-entropy, also fused with the output projection |
//! | [`masked`] | dropout masks and residual sums |
//! | [`embedding`] | token embedding lookup, scaling and positions in one node |
//! | [`gated`] | ConvS2S's gated linear unit and weight normalisation with their backward |
//! | [`recurrent`] | GRU and LSTM cell steps, and additive attention scores, with their backward |
//! | [`select`] | row selection of decoding buffers |
//! | [`adamw`] | the AdamW update in place |
//! | [`process`] | process settings for the fast path (allocator, thread pools) |
//!
//! Every `unsafe` block and every SIMD intrinsic of the workspace is in this crate.
//!
//! The kernels are not called directly by models: `wick_model::ops` is the one place that
//! chooses between a kernel and its composed reference twin (Candle ops only, what CUDA and
//! Metal run), and `wick-model`'s tests hold every kernel to its twin, forward and backward.
//! A kernel called on another device or dtype, or on a thread where [`scope::bar_kernels`] is
//! in force (the forced reference path), returns an error instead of running.

pub mod adamw;
pub mod affine;
pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gated;
pub mod gemm;
pub mod int8;
pub mod layer_norm;
pub mod masked;
pub mod panel;
pub mod process;
pub mod recurrent;
pub mod rows;
pub mod scope;
pub mod select;
mod simd;
mod storage;

use candle_core::{DType, Result, Tensor, bail};

/// The check every public kernel starts with: not barred on this thread, and every floating
/// point operand an `f32` tensor on the CPU.
pub(crate) fn enter(kernel: &'static str, operands: &[&Tensor]) -> Result<()> {
    if scope::kernels_barred() {
        bail!(
            "the CPU kernel `{kernel}` was called where kernels are barred (the forced reference path must compose Candle ops only)"
        )
    }
    for t in operands {
        if !t.device().is_cpu() || t.dtype() != DType::F32 {
            bail!(
                "the CPU kernel `{kernel}` takes f32 tensors on the CPU, got {:?} on {:?}",
                t.dtype(),
                t.device()
            )
        }
    }
    Ok(())
}
