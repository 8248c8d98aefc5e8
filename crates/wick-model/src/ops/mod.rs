//! The one place that decides, op by op, between wick's CPU kernels (`wick_kernels`) and their
//! composed reference twins ([`mod@reference`]: Candle ops only).
//!
//! ```text
//!            layers, attention, architectures, search, loss, optimizer
//!                                  │ ops::softmax_last_dim(x), ops::affine(…), …
//!                                  ▼
//!            use_kernels(x): CPU and f32 and not forced to the reference path?
//!                 yes │                                   │ no
//!                     ▼                                   ▼
//!       wick_kernels (custom ops, SIMD)     ops::reference (Candle ops: CPU, CUDA, Metal)
//! ```
//!
//! The reference path is what CUDA and Metal run. It can be forced on the CPU, so that the
//! composed path is tested (and can be measured) where there is no GPU:
//! - for a whole run, with the environment variable `WICK_REFERENCE_OPS=1`;
//! - for a piece of code, with [`with_reference_ops`], on the calling thread and in the work
//!   it hands to other threads through [`Scope`]. Kernels are then barred on that thread, so
//!   a kernel reached by mistake fails loudly instead of running quietly.
//!
//! Both paths compute the same function; `tests/ops.rs` holds every kernel to its twin,
//! forward and backward.

pub mod reference;

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, bail};
use wick_kernels as k;

pub use wick_kernels::scope::{Scope, with_whole_products};

/// The environment variable that forces the reference path for a whole process.
pub const REFERENCE_OPS_ENV: &str = "WICK_REFERENCE_OPS";

/// `WICK_REFERENCE_OPS` as a switch: unset, empty, `0` or `false` is off; `1` or `true` on.
pub fn reference_ops_from_env() -> std::result::Result<bool, String> {
    match std::env::var(REFERENCE_OPS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{REFERENCE_OPS_ENV} is not valid text"))
        }
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" => Ok(false),
            "1" | "true" => Ok(true),
            other => Err(format!(
                "{REFERENCE_OPS_ENV}={other}: expected 1 (reference path) or 0 (kernels)"
            )),
        },
    }
}

fn forced_by_env() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| reference_ops_from_env().unwrap_or(false))
}

/// Whether the reference path is forced here: by `WICK_REFERENCE_OPS`, or on this thread by
/// [`with_reference_ops`].
pub fn reference_ops_forced() -> bool {
    k::scope::kernels_barred() || forced_by_env()
}

/// Runs `f` on the reference path: every op it calls on this thread (and in parallel work
/// it hands on through [`Scope`]) composes Candle ops, and any kernel call fails.
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    k::scope::bar_kernels(f)
}

/// Whether models on `device` run wick's kernels here (CPU, not forced to the reference
/// path); the models' weights are f32.
pub fn kernels_on(device: &Device) -> bool {
    device.is_cpu() && !reference_ops_forced()
}

/// `"kernels"` or `"reference"`: the path a model on `device` runs here (run manifests record
/// it).
pub fn path_name(device: &Device) -> &'static str {
    if kernels_on(device) {
        "kernels"
    } else {
        "reference"
    }
}

/// Whether ops on `xs` take the kernel path.
pub fn use_kernels(xs: &Tensor) -> bool {
    xs.dtype() == DType::F32 && kernels_on(xs.device())
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernels(xs) {
        k::rows::softmax(xs)
    } else {
        reference::softmax_last_dim(xs)
    }
}

/// Log-softmax over the last dimension, for search (no gradient).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernels(xs) {
        k::rows::log_softmax(xs)
    } else {
        reference::log_softmax_last_dim(xs)
    }
}

/// For each row, the `k` largest log-softmax values with their token ids, largest first
/// (ties: lower id first; NaNs skipped): beam search's candidates, on the host. The kernel
/// path fuses the log-softmax with the selection and copies nothing but the candidates;
/// the reference path computes the log-softmax as a tensor and selects on a host copy.
///
/// # Shapes
/// `(rows, V)` → `rows` lists of at most `k` `(log p, id)`.
pub fn log_softmax_top_k(xs: &Tensor, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
    if use_kernels(xs) {
        k::rows::log_softmax_top_k(xs, k)
    } else {
        let log_probs = reference::log_softmax_last_dim(xs)?.to_dtype(DType::F32)?;
        let v = log_probs.dims().last().copied().unwrap_or(1).max(1);
        let host = log_probs.flatten_all()?.to_vec1::<f32>()?;
        Ok(host
            .chunks_exact(v)
            .map(|row| {
                let mut best = Vec::with_capacity(k + 1);
                k::rows::top_k(row, k, &mut best);
                best
            })
            .collect())
    }
}

/// Index of the first maximum along the last dimension (no gradient).
///
/// # Shapes
/// `(…, V)` → `(…)` u32.
pub fn argmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernels(xs) {
        k::rows::argmax(xs)
    } else {
        reference::argmax_last_dim(xs)
    }
}

/// Layer norm over the last dimension with gain `w` and bias `b` (both `(d,)`).
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if use_kernels(xs) && w.dtype() == DType::F32 {
        k::layer_norm::layer_norm(xs, w, b, eps)
    } else {
        reference::layer_norm(xs, w, b, eps)
    }
}

/// Per-row label-smoothed cross-entropy of `(n, V)` logits against `(n,)` u32 targets:
/// `(smoothed, nll, correct)`, `(n,)` each; only `smoothed` carries a gradient, `correct` is
/// 1 where the argmax is the target.
pub fn label_smoothed_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    epsilon: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, _) = logits.dims2()?;
    if target.dims() != [n] {
        bail!(
            "cross-entropy: logits {:?} need targets of shape [{n}], got {:?}",
            logits.dims(),
            target.dims()
        )
    }
    if use_kernels(logits) {
        k::cross_entropy::label_smoothed_cross_entropy(logits, target, epsilon)
    } else {
        reference::label_smoothed_cross_entropy(logits, target, epsilon)
    }
}

/// [`label_smoothed_cross_entropy`] of the logits `hidden·Wᵀ (+ b)`; on the kernel path
/// without a bias the `(n, V)` logits are never a tensor.
///
/// # Shapes
/// hidden `(n, d)`, weight `(V, d)`, bias `(V,)`, target `(n,)` u32 → three `(n,)` tensors.
pub fn projected_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    target: &Tensor,
    epsilon: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, d) = hidden.dims2()?;
    let (_, wd) = weight.dims2()?;
    if target.dims() != [n] || wd != d {
        bail!(
            "cross-entropy: hidden {:?}, output weight {:?} and targets {:?} do not match",
            hidden.dims(),
            weight.dims(),
            target.dims()
        )
    }
    if use_kernels(hidden) && weight.dtype() == DType::F32 && bias.is_none() {
        return k::cross_entropy::projected_cross_entropy(hidden, weight, target, epsilon);
    }
    let logits = affine(hidden, weight, bias, false, None)?;
    label_smoothed_cross_entropy(&logits, target, epsilon)
}

/// `a·b` of 2-D tensors, either possibly a transposed or narrowed view; no gradient (backward
/// passes and `wick bench matmul` use it).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_kernels(a) && b.dtype() == DType::F32 {
        k::gemm::matmul(a, b)
    } else {
        a.matmul(b)
    }
}

/// `xᵀ` as a new contiguous tensor, no gradient.
pub fn transpose_contiguous(x: &Tensor) -> Result<Tensor> {
    if use_kernels(x) {
        k::gemm::transpose(x)
    } else {
        reference::transpose_contiguous(x)
    }
}

/// Rows `indices` of `buf` along dim 0, of which only the first `len` positions are copied;
/// the rest of each row is zero. No gradient.
///
/// # Shapes
/// buf `(b, cap, w)`, indices u32 `(b',)` → `(b', cap, w)`.
pub fn index_select_prefix(buf: &Tensor, indices: &Tensor, len: usize) -> Result<Tensor> {
    if use_kernels(buf) && indices.device().is_cpu() && indices.dtype() == DType::U32 {
        k::select::index_select_prefix(buf, indices, len)
    } else {
        buf.index_select(indices, 0)
    }
}

/// Rows `indices` of `src`, the first `len` positions of each, written into `dst` in place
/// (the rest of each row of `dst` keeps what it held): [`index_select_prefix`] without a new
/// buffer, for a decoding buffer reordered into a second one of the same room. Kernel path
/// only ([`kernels_on`]); `dst` and `src` must not share storage.
///
/// # Shapes
/// dst `(indices.len(), cap, w)` (contiguous), src `(b, cap, w)`.
pub fn select_prefix_into(dst: &Tensor, src: &Tensor, indices: &[u32], len: usize) -> Result<()> {
    k::select::select_prefix_into(dst, src, indices, len)
}

/// `y = x·Wᵀ + b`, then `max(y, 0)` with `relu`, then `⊙ mask` (a dropout mask after the
/// ReLU, one value per output element).
///
/// # Shapes
/// x `(…, in)`, w `(out, in)`, b `(out,)` → `(…, out)`.
pub fn affine(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    if mask.is_some() && !relu {
        bail!("affine: a dropout mask is applied after the ReLU only")
    }
    if use_kernels(x) && w.dtype() == DType::F32 && b.is_none_or(|b| b.dtype() == DType::F32) {
        k::affine::affine(x, w, b, relu, mask)
    } else {
        reference::affine(x, w, b, relu, mask)
    }
}

/// How [`lay_out_for_decoding`] stores weights: as trained, or as int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32, as trained.
    #[default]
    F32,
    /// int8 rows with one scale each (CTranslate2's int8), inputs quantized per row at every
    /// product (`wick_kernels::int8`); CPU only.
    Int8,
}

impl WeightFormat {
    /// `float32` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "float32",
            WeightFormat::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "float32" => Ok(WeightFormat::F32),
            "int8" => Ok(WeightFormat::Int8),
            other => Err(format!(
                "unknown weight format `{other}` (expected int8 or float32)"
            )),
        }
    }
}

thread_local! {
    static WEIGHT_FORMAT: std::cell::Cell<WeightFormat> =
        const { std::cell::Cell::new(WeightFormat::F32) };
}

/// The format [`lay_out_for_decoding`] uses on this thread.
pub fn weight_format() -> WeightFormat {
    WEIGHT_FORMAT.with(|c| c.get())
}

/// Runs `f` with weights laid out for decoding in `format` on this thread: what
/// `model.for_decoding()` lays out inside it is stored that way. Scoped like
/// [`with_reference_ops`], so that every architecture's layout code stays as it is.
pub fn with_weight_format<R>(format: WeightFormat, f: impl FnOnce() -> R) -> R {
    struct Restore(WeightFormat);
    impl Drop for Restore {
        fn drop(&mut self) {
            WEIGHT_FORMAT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(WEIGHT_FORMAT.with(|c| c.replace(format)));
    f()
}

/// A weight laid out once for products with few rows (decoding steps, and the encoder before
/// them): packed into panels on the kernel path, stored transposed elsewhere, or as int8.
/// Each form stands for the weight on its own (a decoding copy keeps no f32 weight beside
/// it): a path that cannot use it multiplies by a transposed copy made on first use.
#[derive(Clone, Debug)]
pub enum LaidOut {
    /// `(⌈out/64⌉, in, 64)` panels (`wick_kernels::panel`) for `out` features, and Wᵀ
    /// `(in, out)` unpacked from them for the composed path, made on that path's first use.
    Panels {
        panels: Tensor,
        out: usize,
        transposed: std::sync::Arc<OnceLock<Tensor>>,
    },
    /// Wᵀ `(in, out)`, contiguous.
    Transposed(Tensor),
    /// int8 rows for the kernel (`wick_kernels::int8`), and the weight they stand for,
    /// `(wq / s_w)ᵀ` `(in, out)`, which the composed path multiplies by: made on that path's
    /// first use, so that the kernel path holds the weights in int8 alone.
    Int8 {
        weight: std::sync::Arc<k::int8::QuantizedWeight>,
        dequantized_t: std::sync::Arc<OnceLock<Tensor>>,
    },
}

impl LaidOut {
    /// The format this layout stores.
    pub fn format(&self) -> WeightFormat {
        match self {
            LaidOut::Panels { .. } | LaidOut::Transposed(_) => WeightFormat::F32,
            LaidOut::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// The weight's `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            LaidOut::Panels { panels, out, .. } => (*out, panels.dim(1)?),
            LaidOut::Transposed(wt) => (wt.dim(1)?, wt.dim(0)?),
            LaidOut::Int8 { weight, .. } => (weight.out_features(), weight.in_features()),
        })
    }

    /// Wᵀ `(in, out)` in f32 for the composed path: the transposed layout itself, or the copy
    /// made from panels or int8 rows on first use and kept.
    fn transposed(&self) -> Result<Tensor> {
        fn once(cell: &OnceLock<Tensor>, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
            if let Some(t) = cell.get() {
                return Ok(t.clone());
            }
            let t = make()?;
            Ok(cell.get_or_init(|| t).clone())
        }
        match self {
            LaidOut::Transposed(wt) => Ok(wt.clone()),
            LaidOut::Panels {
                panels,
                out,
                transposed,
            } => once(transposed, || {
                // Panel p holds columns p·64 … of Wᵀ: side by side they are Wᵀ, zero-padded.
                let (n, k, width) = panels.dims3()?;
                panels
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((k, n * width))?
                    .narrow(1, 0, *out)?
                    .contiguous()
            }),
            LaidOut::Int8 {
                weight,
                dequantized_t,
            } => once(dequantized_t, || {
                reference::transpose_contiguous(&weight.dequantize()?)
            }),
        }
    }
}

/// Lays `w` `(out, in)` out for decoding ([`LaidOut`]) in this thread's [`weight_format`].
pub fn lay_out_for_decoding(w: &Tensor) -> Result<LaidOut> {
    match weight_format() {
        WeightFormat::Int8 => {
            if !w.device().is_cpu() {
                bail!(
                    "int8 weights are for decoding on the CPU, this model is on {:?}",
                    w.device()
                )
            }
            Ok(LaidOut::Int8 {
                weight: std::sync::Arc::new(k::int8::QuantizedWeight::quantize(w)?),
                dequantized_t: Default::default(),
            })
        }
        WeightFormat::F32 if use_kernels(w) => Ok(LaidOut::Panels {
            panels: k::panel::pack(w)?,
            out: w.dim(0)?,
            transposed: Default::default(),
        }),
        WeightFormat::F32 => Ok(LaidOut::Transposed(reference::transpose_contiguous(w)?)),
    }
}

/// [`affine`] of a layer whose weight is laid out as `laid_out`; no gradient. Panels and
/// int8 rows serve the kernel path; a path that cannot use them multiplies by Wᵀ
/// ([`LaidOut`]). int8 layouts always compute in int8: the kernel on the kernel path, its
/// composed twin ([`reference::affine_int8`]) elsewhere.
pub fn affine_laid_out(
    x: &Tensor,
    laid_out: &LaidOut,
    b: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    match laid_out {
        LaidOut::Int8 { weight, .. } if use_kernels(x) => k::int8::affine(x, weight, b, relu),
        LaidOut::Int8 { .. } => reference::affine_int8(x, &laid_out.transposed()?, b, relu),
        LaidOut::Panels { panels, out, .. } if use_kernels(x) => {
            k::panel::affine(x, panels, b, *out, relu)
        }
        LaidOut::Panels { .. } | LaidOut::Transposed(_) => {
            reference::affine_transposed(x, &laid_out.transposed()?, b, relu)
        }
    }
}

/// `x ⊙ mask`: dropout with a drawn mask (`0` or `1/(1-p)` per element).
pub fn dropout(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if use_kernels(x) {
        k::masked::mask_mul(x, mask)
    } else {
        reference::dropout(x, mask)
    }
}

/// `residual + x`, or `residual + mask ⊙ x` with a dropout mask on the branch.
///
/// # Shapes
/// residual and x of the same shape.
pub fn residual_add(residual: &Tensor, x: &Tensor, mask: Option<Vec<f32>>) -> Result<Tensor> {
    if use_kernels(x) && residual.dtype() == DType::F32 {
        k::masked::masked_add(residual, x, mask)
    } else {
        reference::residual_add(residual, x, mask)
    }
}

/// `table[ids] · scale + positions[offset .. offset + t]`.
///
/// # Shapes
/// ids `(b, t)` u32, table `(V, d)`, positions `(P ≥ offset + t, d)` → `(b, t, d)`.
pub fn embed(
    ids: &Tensor,
    table: &Tensor,
    scale: f64,
    positions: &Tensor,
    offset: usize,
) -> Result<Tensor> {
    if use_kernels(table) && positions.dtype() == DType::F32 {
        k::embedding::embed(ids, table, scale, positions, offset)
    } else {
        reference::embed(ids, table, scale, positions, offset)
    }
}

/// Multi-head self-attention from a packed projection, with the attention dropout mask
/// (`(b, heads, t, t)` values) in training.
///
/// # Shapes
/// qkv `(b, t, 3·d)`, bias `(1|b, 1, 1|t, t)` → `(b, t, d)`.
pub fn attention_qkv(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    if use_kernels(qkv) && bias.dtype() == DType::F32 {
        k::attention::attention_qkv(qkv, bias, heads, mask)
    } else {
        reference::attention_qkv(qkv, bias, heads, mask)
    }
}

/// Multi-head attention from queries to packed keys/values, with the attention dropout mask
/// (`(b, heads, tq, tk)` values) in training. Only the first `d` columns of `q` are read.
///
/// # Shapes
/// q `(b, tq, w ≥ d)`, kv `(b, tk, 2·d)`, bias `(1|b, 1, 1|tq, tk)` → `(b, tq, d)`.
pub fn attention(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    if use_kernels(q) && kv.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        k::attention::attention(q, kv, bias, heads, mask)
    } else {
        reference::attention(q, kv, bias, heads, mask)
    }
}

/// A GRU step from its two projections (with biases), gate layout `r, z, n`:
/// `h' = n + z·(h − n)`, `r = σ(a_r + b_r)`, `z = σ(a_z + b_z)`, `n = tanh(a_n + r·b_n)`.
///
/// # Shapes
/// gi, gh `(b, 3H)`, h `(b, H)` → `(b, H)`.
pub fn gru_cell(gi: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    if use_kernels(gi) && gh.dtype() == DType::F32 && h.dtype() == DType::F32 {
        k::recurrent::gru_cell(gi, gh, h)
    } else {
        reference::gru_cell(gi, gh, h)
    }
}

/// An LSTM step from its two projections (with biases), gate layout `i, f, g, o`:
/// `c' = σ(f)·c + σ(i)·tanh(g)`, `h' = σ(o)·tanh(c')`.
///
/// # Shapes
/// gi, gh `(b, 4H)`, c `(b, H)` → `(h', c')`, `(b, H)` each.
pub fn lstm_cell(gi: &Tensor, gh: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = c.dim(1)?;
    let hc = if use_kernels(gi) && gh.dtype() == DType::F32 && c.dtype() == DType::F32 {
        k::recurrent::lstm_cell(gi, gh, c)?
    } else {
        reference::lstm_cell(gi, gh, c)?
    };
    Ok((hc.narrow(1, 0, d)?, hc.narrow(1, d, d)?))
}

/// Additive attention scores `Σ_k v_k tanh(K[b, s, k] + q[b, k])` (Bahdanau; Luong's concat).
///
/// # Shapes
/// keys `(b, s, H)`, q `(b, H)`, v `(H,)` → `(b, s)`.
pub fn additive_scores(keys: &Tensor, q: &Tensor, v: &Tensor) -> Result<Tensor> {
    if use_kernels(keys) && q.dtype() == DType::F32 && v.dtype() == DType::F32 {
        k::recurrent::additive_scores(keys, q, v)
    } else {
        reference::additive_scores(keys, q, v)
    }
}

/// The gated linear unit over the last dimension: `[a | b]` → `a ⊙ σ(b)`.
///
/// # Shapes
/// `(…, 2h)` → `(…, h)`.
pub fn glu(x: &Tensor) -> Result<Tensor> {
    if use_kernels(x) {
        k::gated::glu(x)
    } else {
        reference::glu(x)
    }
}

/// Weight normalisation `W = g ⊙ V / ‖V‖`, row by row.
///
/// # Shapes
/// v `(out, in)`, g `(out, 1)` → `(out, in)`.
pub fn weight_norm(v: &Tensor, g: &Tensor) -> Result<Tensor> {
    if use_kernels(v) && g.dtype() == DType::F32 {
        k::gated::weight_norm(v, g)
    } else {
        reference::weight_norm(v, g)
    }
}

/// The input of a 1-D convolution of `kernel` taps with `left` zeros before the sequence (and
/// `kernel − 1 − left` after it) as one matrix: row `i` holds positions `i − left ..` of `x`
/// side by side.
///
/// # Shapes
/// `(b, t, h)` → `(b, t, kernel·h)`.
pub fn unfold(x: &Tensor, kernel: usize, left: usize) -> Result<Tensor> {
    if use_kernels(x) {
        k::gated::unfold(x, kernel, left)
    } else {
        reference::unfold(x, kernel, left)
    }
}
