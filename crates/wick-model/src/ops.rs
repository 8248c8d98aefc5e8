//! Fused CPU kernels with hand-written backward passes.
//!
//! Composed from Candle's primitives, a last-dim softmax is 5 full-size ops forward and
//! about 10 backward, a layer norm about 10 and 25, and a label-smoothed cross-entropy over
//! an `(n, V)` logit matrix builds a dozen `(n, V)` temporaries. Each op allocates a buffer
//! and walks memory once, which is where a small-model training step loses most of its time
//! (`../shared/notes/performance.md`). These kernels do each in one pass forward and one pass
//! backward. candle-nn's own fused softmax and layer norm have no backward at all.
//!
//! Every kernel keeps its composed twin (`*_reference`): it runs on devices without a kernel
//! (CUDA, Metal) and the tests check the kernels against it, forward and backward.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail,
};
use multiversion::multiversion;
use rayon::prelude::*;

/// Rows processed per parallel task; below this many elements a kernel runs serially.
const PAR_MIN_ELEMS: usize = 1 << 15;

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

fn slice_u32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    let data = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => bail!("{what}: expected u32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f(row_index, out_row)` over rows of width `d`, in parallel when large.
fn for_rows(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    } else {
        out.chunks_mut(d).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// `e^x` for f32 without a libm call, so that loops over rows vectorise: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its degree-6 Taylor polynomial (truncation < 1.5e-7 relative),
/// 2^n by writing the exponent bits. Inputs below −87 give exactly 0 (e^−87 is at the edge
/// of the normal range), which keeps masked attention scores (−1e9) exactly out.
/// Hand-written because libm's `expf` is scalar, and softmax and the cross-entropy over the
/// vocabulary spent ~15% of a training step's instructions in it.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `dst[j] = e^(src[j] − shift)`; returns the sum. Always inlined so that it is compiled
/// with the vector width of the kernel it sits in.
#[inline(always)]
pub(crate) fn exp_shifted(dst: &mut [f32], src: &[f32], shift: f32) -> f32 {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fast_exp(s - shift);
    }
    lane_sum(dst)
}

/// Σ x with eight partial sums, which vectorise; a single running sum would stay scalar to
/// keep the order of float additions.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Index of the first element equal to `value`, eight at a time: a scalar `position` scan
/// over the vocabulary cost a fifth of the cross-entropy row kernel.
#[inline(always)]
fn first_equal(x: &[f32], value: f32) -> Option<usize> {
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for (i, c) in chunks.enumerate() {
        let mut hit = false;
        for &v in c {
            hit |= v == value;
        }
        if hit {
            return c.iter().position(|&v| v == value).map(|j| i * 8 + j);
        }
    }
    rest.iter()
        .position(|&v| v == value)
        .map(|j| x.len() - rest.len() + j)
}

/// max x (−∞ for an empty row; NaNs are skipped), in eight lanes like [`lane_sum`].
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..8 {
            // A compare and select (one vector max): `f32::max` would add NaN fix-ups.
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

/// Label-smoothed cross-entropy of one row of logits `xr` `(V,)` against `target`:
/// `[smoothed, nll, correct]`, with `exp` `(V,)` left holding e^(x − max) and the second
/// value its sum. `correct` is 1 when the first maximal logit is the target's.
#[multiversion(targets("x86_64+avx2+fma"))]
fn ce_row(xr: &[f32], exp: &mut [f32], target: usize, eps: f32) -> ([f32; 3], f32) {
    let max = lane_max(xr);
    let arg = first_equal(xr, max).unwrap_or(0);
    let sum = exp_shifted(exp, xr, max);
    let lse = max + sum.ln();
    let mean_x = lane_sum(xr) / xr.len() as f32;
    let nll = lse - xr[target];
    let smoothed = (1.0 - eps) * nll + eps * (lse - mean_x);
    ([smoothed, nll, if arg == target { 1.0 } else { 0.0 }], sum)
}

/// `y = a·x`, elementwise.
#[multiversion(targets("x86_64+avx2+fma"))]
fn scale_into(y: &mut [f32], x: &[f32], a: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * a;
    }
}

/// `y = softmax(x)` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_row(y: &mut [f32], x: &[f32]) {
    let inv = 1.0 / exp_shifted(y, x, lane_max(x));
    for v in y.iter_mut() {
        *v *= inv;
    }
}

/// `dx = g·softmax(x) − c`, elementwise.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_minus_uniform(dx: &mut [f32], x: &[f32], g: f32, c: f32) {
    let sum = exp_shifted(dx, x, lane_max(x));
    let scale = g / sum;
    for o in dx.iter_mut() {
        *o = *o * scale - c;
    }
}

/// `y = a·(y − c)` in place, elementwise.
#[multiversion(targets("x86_64+avx2+fma"))]
fn shift_scale_in_place(y: &mut [f32], c: f32, a: f32) {
    for y in y.iter_mut() {
        *y = a * (*y - c);
    }
}

/// A same-shape output computed row by row over the last dimension: `row(out_row, in_row)`.
fn map_last_dim(
    s: &CpuStorage,
    l: &Layout,
    what: &str,
    row: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let x = slice(s, l, what)?;
    let d = l.dims().last().copied().unwrap_or(1).max(1);
    let mut out = vec![0f32; x.len()];
    for_rows(&mut out, d, |i, y| row(y, &x[i * d..(i + 1) * d]));
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

fn use_kernel(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

// ---------------------------------------------------------------------------------------
// Softmax over the last dimension.

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "wick-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_last_dim(s, l, "softmax", softmax_row)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxBackward)?))
    }
}

/// `dx = y ⊙ (dy − Σ_j y_j dy_j)` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "wick-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "softmax backward")?;
        let dy = slice(s2, l2, "softmax backward")?;
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, d, |i, dx| {
            let (yr, dyr) = (&y[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
            for ((o, &yj), &gj) in dx.iter_mut().zip(yr).zip(dyr) {
                *o = yj * (gj - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Softmax)
    } else {
        softmax_reference(xs)
    }
}

pub fn softmax_reference(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, D::Minus1)
}

// ---------------------------------------------------------------------------------------
// Decoding: argmax and log-softmax over the vocabulary, no autograd.

/// Index of the first maximum of a row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn row_argmax(x: &[f32]) -> u32 {
    first_equal(x, lane_max(x)).unwrap_or(0) as u32
}

struct Argmax;

impl CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "wick-argmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "argmax")?;
        let dims = l.dims();
        let Some((&d, rows)) = dims.split_last() else {
            bail!("argmax: needs at least one dimension")
        };
        if d == 0 {
            bail!("argmax: empty last dimension")
        }
        let out: Vec<u32> = x.chunks_exact(d).map(row_argmax).collect();
        Ok((CpuStorage::U32(out), Shape::from(rows.to_vec())))
    }
}

/// Index of the first maximum along the last dimension (greedy decoding's next token), as
/// Candle's `argmax(D::Minus1)` but in one vectorised pass (Candle's reduction took ~9% of
/// a greedy decoding step). No gradient.
///
/// # Shapes
/// `(…, V)` f32 → `(…)` u32.
pub fn argmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&Argmax)
    } else {
        xs.argmax(D::Minus1)
    }
}

/// `y = x − log Σ e^x` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn log_softmax_row(y: &mut [f32], x: &[f32]) {
    let max = lane_max(x);
    let lse = max + exp_shifted(y, x, max).ln();
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x - lse;
    }
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "wick-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_last_dim(s, l, "log-softmax", log_softmax_row)
    }
}

/// Log-softmax over the last dimension for beam search: one fused pass per row where
/// `candle_nn::ops::log_softmax` makes five full-size tensors. No gradient.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&LogSoftmax)
    } else {
        candle_nn::ops::log_softmax(xs, D::Minus1)
    }
}

// ---------------------------------------------------------------------------------------
// Layer norm over the last dimension.

struct LayerNormOp {
    eps: f32,
}

/// Mean and 1/σ of a row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x) / n;
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += (c[l] - mean) * (c[l] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + rest) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `y = (x − μ)/σ · γ + β` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn layer_norm_row(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let (mean, rstd) = row_stats(x, eps);
    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
        *y = (x - mean) * rstd * w + b;
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "wick-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer norm")?;
        let (w, b) = (
            slice(s2, l2, "layer norm weight")?,
            slice(s3, l3, "layer norm bias")?,
        );
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |i, y| {
            layer_norm_row(y, &x[i * d..(i + 1) * d], w, b, self.eps)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count() / d;
        let grad = grad_res.contiguous()?;
        // One pass yields dx, dγ and dβ, packed as `[dx (n·d) | dγ (d) | dβ (d)]`.
        let packed = x.apply_op3_no_bwd(w, &grad, &LayerNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n * d)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n * d, d)?;
        let db = packed.narrow(0, n * d + d, d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Layer-norm backward of the rows of `dx` (`x`, `dy` start at the same row; extra rows are
/// ignored); returns this block's partial `[dγ | dβ]`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn layer_norm_backward_rows(
    dx: &mut [f32],
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    eps: f32,
) -> Vec<f32> {
    let d = w.len();
    let mut acc = vec![0f32; 2 * d];
    let mut xhat = vec![0f32; d];
    let mut g = vec![0f32; d];
    for ((dxr, xr), dyr) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
        let (mean, rstd) = row_stats(xr, eps);
        for j in 0..d {
            xhat[j] = (xr[j] - mean) * rstd;
            g[j] = dyr[j] * w[j];
            acc[j] += dyr[j] * xhat[j];
            acc[d + j] += dyr[j];
        }
        let mean_g = lane_sum(&g) / d as f32;
        let mut gx = [0f32; 8];
        let (gc, xc) = (g.chunks_exact(8), xhat.chunks_exact(8));
        let rest: f32 = gc
            .remainder()
            .iter()
            .zip(xc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in gc.zip(xc) {
            for l in 0..8 {
                gx[l] += a[l] * b[l];
            }
        }
        let mean_gx = (gx.iter().sum::<f32>() + rest) / d as f32;
        for j in 0..d {
            dxr[j] = (g[j] - mean_g - xhat[j] * mean_gx) * rstd;
        }
    }
    acc
}

/// With x̂ = (x − μ)/σ and g = dy ⊙ γ: `dx = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ`,
/// `dγ = Σ_rows dy ⊙ x̂`, `dβ = Σ_rows dy`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "wick-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer norm backward")?;
        let w = slice(s2, l2, "layer norm backward")?;
        let dy = slice(s3, l3, "layer norm backward")?;
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; n * d + 2 * d];
        let (dx, dwb) = out.split_at_mut(n * d);
        // Row chunks in parallel, each with its own dγ/dβ partial sums, reduced at the end.
        let rows_per_task = (PAR_MIN_ELEMS / d).max(1);
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(rows_per_task * d)
            .enumerate()
            .map(|(c, chunk)| {
                let rows = c * rows_per_task * d..;
                layer_norm_backward_rows(chunk, &x[rows.clone()], &dy[rows], w, self.eps)
            })
            .collect();
        for p in partials {
            for (o, v) in dwb.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n * d + 2 * d)))
    }
}

/// Layer norm over the last dimension with gain `w` and bias `b` (both `(d,)`),
/// differentiable in all three.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        )
    } else {
        layer_norm_reference(xs, w, b, eps)
    }
}

pub fn layer_norm_reference(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    centred
        .broadcast_mul(&inv_std)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

// ---------------------------------------------------------------------------------------
// Label-smoothed cross-entropy.

/// Per row of `(n, V)` logits and target `y`: `[smoothed loss, −log p_y, argmax == y]`,
/// where smoothed = (1 − ε)(−log p_y) + ε·mean_v(−log p_v). Only column 0 has a gradient.
struct SmoothedCrossEntropy {
    epsilon: f32,
}

impl CustomOp2 for SmoothedCrossEntropy {
    fn name(&self) -> &'static str {
        "wick-label-smoothed-ce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "cross-entropy logits")?;
        let y = slice_u32(s2, l2, "cross-entropy targets")?;
        let (n, v) = l1.shape().dims2()?;
        if let Some(&bad) = y.iter().find(|&&t| t as usize >= v) {
            bail!("cross-entropy: target id {bad} outside a vocabulary of {v}")
        }
        let mut out = vec![0f32; n * 3];
        let eps = self.epsilon;
        let per_row = |scratch: &mut Vec<f32>, i: usize, o: &mut [f32]| {
            scratch.resize(v, 0.0);
            let (stats, _) = ce_row(&x[i * v..(i + 1) * v], scratch, y[i] as usize, eps);
            o.copy_from_slice(&stats);
        };
        if n * v >= PAR_MIN_ELEMS {
            out.par_chunks_mut(3)
                .enumerate()
                .for_each_init(Vec::new, |s, (i, o)| per_row(s, i, o));
        } else {
            let mut s = Vec::new();
            out.chunks_mut(3)
                .enumerate()
                .for_each(|(i, o)| per_row(&mut s, i, o));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 3))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?; // (n,)
        let dx = logits.apply_op3_no_bwd(
            target,
            &g,
            &SmoothedCrossEntropyBackward {
                epsilon: self.epsilon,
            },
        )?;
        Ok((Some(dx), None))
    }
}

/// `dlogits = g_row · (softmax − q)` with `q = (1 − ε)·onehot(y) + ε/V`.
struct SmoothedCrossEntropyBackward {
    epsilon: f32,
}

impl CustomOp3 for SmoothedCrossEntropyBackward {
    fn name(&self) -> &'static str {
        "wick-label-smoothed-ce-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "cross-entropy backward")?;
        let y = slice_u32(s2, l2, "cross-entropy backward")?;
        let g = slice(s3, l3, "cross-entropy backward")?;
        let (_, v) = l1.shape().dims2()?;
        let uniform = self.epsilon / v as f32;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, v, |i, dx| {
            let gi = g[i];
            if gi == 0.0 {
                return; // padded position: zero gradient, already zero
            }
            let xr = &x[i * v..(i + 1) * v];
            softmax_minus_uniform(dx, xr, gi, gi * uniform);
            dx[y[i] as usize] -= gi * (1.0 - self.epsilon);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-row label-smoothed cross-entropy of `(n, V)` logits against `(n,)` u32 targets.
///
/// Returns `(smoothed (n,), nll (n,), correct (n,))`; only `smoothed` carries a gradient,
/// `correct` is 1.0 where the argmax is the target.
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
    if !use_kernel(logits) {
        return label_smoothed_cross_entropy_reference(logits, target, epsilon);
    }
    let out = logits.contiguous()?.apply_op2(
        &target.contiguous()?,
        SmoothedCrossEntropy {
            epsilon: epsilon as f32,
        },
    )?; // (n, 3)
    let smoothed = out.narrow(1, 0, 1)?.squeeze(1)?;
    let stats = out.detach();
    Ok((
        smoothed,
        stats.narrow(1, 1, 1)?.squeeze(1)?,
        stats.narrow(1, 2, 1)?.squeeze(1)?,
    ))
}

thread_local! {
    /// Set while this thread runs products whole (see [`with_whole_products`]).
    static WHOLE_PRODUCTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the products this thread starts left whole instead of split into one block per
/// thread. For callers that already keep every thread busy with work of its own (the
/// training step's shards, `wick_train::step`): there the split only repacked the shared
/// operand once more per block (small preset step: 449–454 against 429–439 ms). Results are
/// the same either way; other threads may still steal the work.
pub fn with_whole_products<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            WHOLE_PRODUCTS.set(self.0);
        }
    }
    let _restore = Restore(WHOLE_PRODUCTS.replace(true));
    f()
}

/// Whether this thread's products run whole ([`with_whole_products`]).
pub(crate) fn products_whole() -> bool {
    WHOLE_PRODUCTS.get()
}

/// Rows of the output per task below which [`gemm_into`] does not split rows.
const GEMM_MIN_ROWS_PER_TASK: usize = 64;

/// Columns of the output per task below which [`gemm_into`] does not split columns.
const GEMM_MIN_COLS_PER_TASK: usize = 512;

/// `dst` `(m, n)` row-major = A·B (`+= ` with `accumulate`), A `(m, k)` and B `(k, n)` read
/// through (row, column) strides, on the `gemm` kernel Candle's own matmul uses.
///
/// With several threads the output is split into one block per thread, each a
/// single-threaded `gemm`: by rows, or by columns when there are more columns than rows
/// (the projection onto the vocabulary). `gemm`'s own threading splits every k-block
/// of the product and synchronises after each, which measured slower on the training step's
/// shapes (`wick bench matmul`) on this class of machine (few cores); it is left the
/// products too small to split.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dims: (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
) -> Result<()> {
    let product = Product {
        dims,
        a,
        a_strides,
        b,
        b_strides,
    };
    product.check()?;
    if dst.len() < dims.0 * dims.1 {
        bail!("gemm: output buffer too small for {dims:?}")
    }
    // SAFETY: dst holds the m × n output (checked above), the operands their extents.
    unsafe { product.run(dst.as_mut_ptr(), accumulate) };
    Ok(())
}

/// One product `A·B` with A `(m, k)` and B `(k, n)` read through (row, column) strides,
/// `dims` = (m, n, k).
pub(crate) struct Product<'a> {
    pub dims: (usize, usize, usize),
    pub a: &'a [f32],
    pub a_strides: (usize, usize),
    pub b: &'a [f32],
    pub b_strides: (usize, usize),
}

/// The products' outputs one after another in one new buffer, never zeroed: a product
/// without accumulation writes every element of its output and reads none (`gemm` does not
/// read the destination then). Zeroing the logits `(rows, V)` alone took ~1% of a tiny
/// training step.
pub(crate) fn gemm_fresh(products: &[Product]) -> Result<Vec<f32>> {
    for p in products {
        p.check()?;
    }
    let len = products.iter().map(|p| p.dims.0 * p.dims.1).sum();
    let mut out = Vec::<f32>::with_capacity(len);
    let base = out.as_mut_ptr();
    let mut offset = 0;
    for p in products {
        // SAFETY: outputs are laid end to end within the capacity of `len` elements.
        unsafe { p.run(base.add(offset), false) };
        offset += p.dims.0 * p.dims.1;
    }
    // SAFETY: every element in 0..len was written by exactly one product above.
    unsafe { out.set_len(len) };
    Ok(out)
}

impl Product<'_> {
    /// The operands reach every element their strides address.
    fn check(&self) -> Result<()> {
        let (m, n, k) = self.dims;
        let reach = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * rs + (cols - 1) * cs + 1
            }
        };
        if self.a.len() < reach(self.a_strides, m, k) || self.b.len() < reach(self.b_strides, k, n)
        {
            bail!("gemm: operands too small for ({m}×{k})·({k}×{n})")
        }
        Ok(())
    }

    /// # Safety
    /// `dst` is valid for writes (and reads, with `accumulate`) of `m × n` elements, and the
    /// operands passed [`Self::check`].
    unsafe fn run(&self, dst: *mut f32, accumulate: bool) {
        let (m, n, k) = self.dims;
        let ((a_rs, a_cs), (b_rs, b_cs)) = (self.a_strides, self.b_strides);
        let threads = if WHOLE_PRODUCTS.get() {
            1
        } else {
            candle_core::utils::get_num_threads()
        };
        let (ap, bp) = (SendPtr(self.a.as_ptr()), SendPtr(self.b.as_ptr()));
        let dp = SendPtr(dst as *const f32);
        let product = |dst: *mut f32, (rows, cols): (usize, usize), a, b, parallelism| {
            // SAFETY: the blocks handed out below lie within the extents the caller
            // guarantees, and no two blocks of `dst` overlap.
            unsafe {
                gemm_unchecked(
                    dst,
                    n,
                    (rows, cols, k),
                    a,
                    (a_rs, a_cs),
                    b,
                    (b_rs, b_cs),
                    accumulate,
                    parallelism,
                )
            }
        };
        // Every block packs its own copy of the operand it shares with the other blocks, so
        // the split runs along the longer side of the output: row blocks share B (k × n),
        // column blocks share A (m × k). Decoding's projection onto the vocabulary, 320 rows
        // by 16,000 columns for beam 5, packed all of Wᵀ once per row block.
        let by_rows = m >= 2 * GEMM_MIN_ROWS_PER_TASK && (m >= n || n < 2 * GEMM_MIN_COLS_PER_TASK);
        if threads > 1 && by_rows && n > 0 {
            let rows_per_task = m.div_ceil(threads).max(GEMM_MIN_ROWS_PER_TASK);
            (0..m.div_ceil(rows_per_task))
                .into_par_iter()
                .for_each(|i| {
                    let r = i * rows_per_task;
                    let rows = rows_per_task.min(m - r);
                    let dst = dp.get_mut().wrapping_add(r * n);
                    let a = ap.get().wrapping_add(r * a_rs);
                    product(dst, (rows, n), a, bp.get(), gemm::Parallelism::None);
                });
            return;
        }
        if threads > 1 && n >= 2 * GEMM_MIN_COLS_PER_TASK && m > 0 {
            // Multiples of 16 columns keep every block's edges on the kernel's register tiles.
            let cols_per_task = n.div_ceil(threads).next_multiple_of(16);
            (0..n.div_ceil(cols_per_task))
                .into_par_iter()
                .for_each(|i| {
                    let j = i * cols_per_task;
                    let cols = cols_per_task.min(n - j);
                    let dst = dp.get_mut().wrapping_add(j);
                    let b = bp.get().wrapping_add(j * b_cs);
                    product(dst, (m, cols), ap.get(), b, gemm::Parallelism::None);
                });
            return;
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        product(dst, (m, n), ap.get(), bp.get(), parallelism);
    }
}

/// A pointer handed to worker threads that write disjoint blocks of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *const f32);

// SAFETY: only used for blocks of buffers that outlive the parallel loop, read-only or
// written in disjoint parts.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so that closures capture the wrapper (Send) and not the field.
    pub(crate) fn get(self) -> *const f32 {
        self.0
    }

    /// The pointer for writing, for blocks the caller owns.
    pub(crate) fn get_mut(self) -> *mut f32 {
        self.0 as *mut f32
    }
}

/// `a·b` for 2-D f32 tensors on the CPU, either operand possibly a transposed or narrowed view,
/// through [`gemm_into`] (so with its threading); no autograd. Backward passes and
/// `wick bench matmul` use it, so the benchmark times the products the step runs.
///
/// # Shapes
/// a `(m, k)`, b `(k, n)` → `(m, n)`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_kernel(a) && b.device().is_cpu() && b.dtype() == DType::F32 {
        a.apply_op2_no_bwd(b, &MatMul)
    } else {
        a.matmul(b)
    }
}

struct MatMul;

/// The storage from a 2-D layout's first element, with its (row, column) strides.
pub(crate) fn strided_2d<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], (usize, usize))> {
    let CpuStorage::F32(data) = s else {
        bail!("matmul: expected f32")
    };
    match l.stride() {
        &[rs, cs] => Ok((&data[l.start_offset()..], (rs, cs))),
        other => bail!("matmul: expected a 2-D tensor, got strides {other:?}"),
    }
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "wick-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            bail!("matmul: ({m}×{k})·({k2}×{n})")
        }
        let (a, a_strides) = strided_2d(s1, l1)?;
        let (b, b_strides) = strided_2d(s2, l2)?;
        let out = gemm_fresh(&[Product {
            dims: (m, n, k),
            a,
            a_strides,
            b,
            b_strides,
        }])?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

struct Transpose;

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "wick-transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "transpose")?;
        let (r, c) = l.shape().dims2()?;
        let mut out = vec![0f32; r * c];
        // Tiles of 32 × 32 keep both the rows read and the rows written in L1; output row
        // blocks run in parallel.
        const TILE: usize = 32;
        if r > 0 {
            out.par_chunks_mut(TILE * r)
                .enumerate()
                .for_each(|(bj, block)| {
                    let j0 = bj * TILE;
                    let cols = block.len() / r;
                    for i0 in (0..r).step_by(TILE) {
                        for i in i0..(i0 + TILE).min(r) {
                            let src = &x[i * c + j0..i * c + j0 + cols];
                            for (dj, &v) in src.iter().enumerate() {
                                block[dj * r + i] = v;
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((c, r))))
    }
}

/// `xᵀ` as a new contiguous tensor, no gradient. Written here because Candle's
/// `t()?.contiguous()` walks a strided index one element at a time: 4% of a greedy decoding
/// call on the small preset went to transposing its weights that way.
///
/// # Shapes
/// `(r, c)` → `(c, r)`.
pub fn transpose_contiguous(x: &Tensor) -> Result<Tensor> {
    if use_kernel(x) {
        x.contiguous()?.apply_op1_no_bwd(&Transpose)
    } else {
        x.t()?.contiguous()
    }
}

struct SelectPrefix {
    len: usize,
}

impl CustomOp2 for SelectPrefix {
    fn name(&self) -> &'static str {
        "wick-select-prefix"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cap, w) = l1.shape().dims3()?;
        let src = slice(s1, l1, "select-prefix buffer")?;
        let ids = slice_u32(s2, l2, "select-prefix indices")?;
        if self.len > cap {
            bail!("select-prefix: {} rows of a buffer of {cap}", self.len)
        }
        if let Some(&i) = ids.iter().find(|&&i| i as usize >= b) {
            bail!("select-prefix: index {i} out of range for {b} rows")
        }
        let (block, used) = (cap * w, self.len * w);
        let mut out = vec![0f32; ids.len() * block];
        let copy = |(dst, &i): (&mut [f32], &u32)| {
            dst[..used].copy_from_slice(&src[i as usize * block..][..used]);
        };
        if ids.len() * used >= PAR_MIN_ELEMS {
            out.par_chunks_mut(block.max(1)).zip(ids).for_each(copy);
        } else {
            out.chunks_mut(block.max(1)).zip(ids).for_each(copy);
        }
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), cap, w))))
    }
}

/// Rows `indices` of `buf` along dim 0, of which only the first `len` positions are copied;
/// the rest of each row is zero. For decoding buffers that hold `len` positions in a larger
/// capacity (beam search reorders them every step), no gradient.
///
/// # Shapes
/// buf `(b, cap, w)`, indices u32 `(b',)` → `(b', cap, w)`.
pub fn index_select_prefix(buf: &Tensor, indices: &Tensor, len: usize) -> Result<Tensor> {
    if use_kernel(buf) && indices.device().is_cpu() && indices.dtype() == DType::U32 {
        buf.contiguous()?
            .apply_op2_no_bwd(&indices.contiguous()?, &SelectPrefix { len })
    } else {
        buf.index_select(indices, 0)
    }
}

/// # Safety
/// `dst` reaches every `(row, column)` of an `(m, n)` matrix with row stride `dst_rs` (column
/// stride 1), `a` every element of an `(m, k)` matrix with the given strides, `b` likewise
/// for `(k, n)`; no other thread touches those elements of `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller guarantees the operands' extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Output projection and label-smoothed cross-entropy in one op.

/// `[smoothed, nll, correct]` per row of `hidden·Wᵀ` without the logits ever becoming a
/// tensor. Forward keeps the softmax probabilities `(n, V)` for backward (in place of the
/// logits a composed graph would keep), so backward needs no exponentials and turns them
/// into dlogits in place; the two gradient matmuls follow. Composed, the same step builds
/// and accumulates three `(n, V)` gradients (loss, reshape, matmul), the largest tensors of a
/// small model's step.
struct ProjectedCrossEntropy {
    epsilon: f32,
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

impl ProjectedCrossEntropy {
    /// Probabilities `(n, V)` and the per-row `[smoothed, nll, correct]` `(n, 3)`.
    fn compute(
        &self,
        h: &[f32],
        w: &[f32],
        y: &[u32],
        n: usize,
        d: usize,
        v: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut probs = gemm_fresh(&[Product {
            dims: (n, v, d),
            a: h,
            a_strides: (d, 1),
            b: w,
            b_strides: (1, d),
        }])?; // logits
        let mut out = vec![0f32; n * 3];
        let eps = self.epsilon;
        probs
            .par_chunks_mut(v)
            .zip(out.par_chunks_mut(3))
            .enumerate()
            .for_each_init(Vec::new, |scratch: &mut Vec<f32>, (i, (row, o))| {
                scratch.resize(v, 0.0);
                let (stats, sum) = ce_row(row, scratch, y[i] as usize, eps);
                scale_into(row, scratch, 1.0 / sum); // probabilities
                o.copy_from_slice(&stats);
            });
        Ok((probs, out))
    }
}

impl CustomOp3 for ProjectedCrossEntropy {
    fn name(&self) -> &'static str {
        "wick-projected-label-smoothed-ce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = slice(s1, l1, "cross-entropy hidden states")?;
        let w = slice(s2, l2, "output projection")?;
        let y = slice_u32(s3, l3, "cross-entropy targets")?;
        let (n, d) = l1.shape().dims2()?;
        let (v, _) = l2.shape().dims2()?;
        if let Some(&bad) = y.iter().find(|&&t| t as usize >= v) {
            bail!("cross-entropy: target id {bad} outside a vocabulary of {v}")
        }
        let (probs, out) = self.compute(h, w, y, n, d, v)?;
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((n, 3))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?; // (n,)
        let op = ProjectedCrossEntropyBackward {
            forward: self,
            target: target.contiguous()?,
        };
        // One buffer holds dH then dW, so that each is a contiguous slice of it.
        let both = hidden.apply_op3_no_bwd(weight, &g, &op)?;
        let nh = hidden.elem_count();
        let dh = both.narrow(0, 0, nh)?.reshape(hidden.shape())?;
        let dw = both
            .narrow(0, nh, weight.elem_count())?
            .reshape(weight.shape())?;
        Ok((Some(dh), Some(dw), None))
    }
}

/// dlogits = g_row · (p − q) with q = (1 − ε)·onehot(y) + ε/V, made in place in the kept
/// probabilities, then dH = dlogits·W and dW = dlogitsᵀ·H; output `[dH | dW]` flat.
struct ProjectedCrossEntropyBackward<'a> {
    forward: &'a ProjectedCrossEntropy,
    target: Tensor,
}

impl CustomOp3 for ProjectedCrossEntropyBackward<'_> {
    fn name(&self) -> &'static str {
        "wick-projected-label-smoothed-ce-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = slice(s1, l1, "cross-entropy hidden states")?;
        let w = slice(s2, l2, "output projection")?;
        let g = slice(s3, l3, "cross-entropy gradient")?;
        let (n, d) = l1.shape().dims2()?;
        let (v, _) = l2.shape().dims2()?;
        let (storage, layout) = self.target.storage_and_layout();
        let y = match &*storage {
            candle_core::Storage::Cpu(cpu) => slice_u32(cpu, layout, "cross-entropy targets")?,
            _ => bail!("cross-entropy: the fused kernel runs on the CPU only"),
        };
        let fwd = self.forward;
        let kept = fwd
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .take();
        // A second backward through the same graph finds the buffer gone and recomputes it.
        let mut dlogits = match kept {
            Some(p) => p,
            None => fwd.compute(h, w, y, n, d, v)?.0,
        };
        let uniform = fwd.epsilon / v as f32;
        let on_target = 1.0 - fwd.epsilon;
        dlogits.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
            let gi = g[i];
            if gi == 0.0 {
                row.fill(0.0); // padded position
                return;
            }
            shift_scale_in_place(row, uniform, gi);
            row[y[i] as usize] -= gi * on_target;
        });
        let both = gemm_fresh(&[
            // dlogits·W
            Product {
                dims: (n, d, v),
                a: &dlogits,
                a_strides: (v, 1),
                b: w,
                b_strides: (d, 1),
            },
            // dlogitsᵀ·H
            Product {
                dims: (v, d, n),
                a: &dlogits,
                a_strides: (1, v),
                b: h,
                b_strides: (d, 1),
            },
        ])?;
        Ok((CpuStorage::F32(both), Shape::from(n * d + v * d)))
    }
}

/// [`label_smoothed_cross_entropy`] of the logits `hidden·Wᵀ`, without materialising them.
///
/// # Shapes
/// hidden `(n, d)`, weight `(V, d)`, target `(n,)` u32 → `(smoothed, nll, correct)`, `(n,)`
/// each; only `smoothed` carries a gradient (to `hidden` and `weight`).
pub fn projected_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
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
    if !use_kernel(hidden) || weight.dtype() != DType::F32 {
        let logits = hidden.matmul(&weight.t()?)?;
        return label_smoothed_cross_entropy(&logits, target, epsilon);
    }
    let out = hidden.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &target.contiguous()?,
        ProjectedCrossEntropy {
            epsilon: epsilon as f32,
            probs: std::sync::Mutex::new(None),
        },
    )?; // (n, 3)
    let smoothed = out.narrow(1, 0, 1)?.squeeze(1)?;
    let stats = out.detach();
    Ok((
        smoothed,
        stats.narrow(1, 1, 1)?.squeeze(1)?,
        stats.narrow(1, 2, 1)?.squeeze(1)?,
    ))
}

pub fn label_smoothed_cross_entropy_reference(
    logits: &Tensor,
    target: &Tensor,
    epsilon: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?; // (n, V)
    let nll = log_probs
        .gather(&target.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?; // (n,)
    let smoothed = if epsilon > 0.0 {
        let uniform = log_probs.mean(D::Minus1)?.neg()?;
        ((&nll * (1.0 - epsilon))? + (uniform * epsilon)?)?
    } else {
        nll.clone()
    };
    let correct = logits
        .detach()
        .argmax(D::Minus1)?
        .eq(target)?
        .to_dtype(DType::F32)?;
    Ok((smoothed, nll.detach(), correct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(-87.5), 0.0);
        assert_eq!(fast_exp(-1e9), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        let mut dst = [0f32; 19];
        let src: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let sum = exp_shifted(&mut dst, &src, 1.0);
        let want: f32 = src.iter().map(|s| (s - 1.0).exp()).sum();
        assert!((sum - want).abs() < 1e-5 * want);
    }
}
