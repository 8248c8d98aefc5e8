//! Row kernels over the last dimension: softmax (with its backward), and decoding's
//! log-softmax and argmax over the vocabulary.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;

use crate::simd::{exp_shifted, first_equal, lane_max};
use crate::storage::{for_rows, slice};

/// `y = softmax(x)` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_row(y: &mut [f32], x: &[f32]) {
    let inv = 1.0 / exp_shifted(y, x, lane_max(x));
    for v in y.iter_mut() {
        *v *= inv;
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
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("softmax", &[xs])?;
    xs.contiguous()?.apply_op1(Softmax)
}

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
pub fn argmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("argmax", &[xs])?;
    xs.contiguous()?.apply_op1_no_bwd(&Argmax)
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
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("log-softmax", &[xs])?;
    xs.contiguous()?.apply_op1_no_bwd(&LogSoftmax)
}
