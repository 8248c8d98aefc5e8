//! Layer normalisation over the last dimension (Ba et al., 2016), forward and backward in one
//! pass each. candle-nn 0.11's fused layer norm has no backward and silently cuts the graph.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::simd::lane_sum;
use crate::storage::{PAR_MIN_ELEMS, for_rows, slice};

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
///
/// # Shapes
/// xs `(…, d)` → `(…, d)`.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    crate::enter("layer-norm", &[xs, w, b])?;
    xs.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}
