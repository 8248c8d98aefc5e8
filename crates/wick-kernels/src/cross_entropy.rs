//! Label-smoothed cross-entropy over the vocabulary, on its own and fused with the output
//! projection.
//!
//! The smoothed target puts `1 − ε` on the reference token and spreads `ε` uniformly over the
//! vocabulary, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`:
//! `loss = (1 − ε)·(−log p_y) + ε·mean_v(−log p_v)`. Composed from Candle ops, the loss over an
//! `(n, V)` logit matrix builds a dozen `(n, V)` temporaries; these kernels make one pass
//! forward and one backward, and never build the one-hot or smoothed target.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::gemm::{Product, gemm_fresh};
use crate::simd::{exp_shifted, first_equal, lane_max, lane_sum};
use crate::storage::{PAR_MIN_ELEMS, for_rows, slice, slice_u32};

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

/// The per-row outputs `(n, 3)` of the two ops below, split: only `smoothed` keeps the graph.
fn split_stats(out: Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let smoothed = out.narrow(1, 0, 1)?.squeeze(1)?;
    let stats = out.detach();
    Ok((
        smoothed,
        stats.narrow(1, 1, 1)?.squeeze(1)?,
        stats.narrow(1, 2, 1)?.squeeze(1)?,
    ))
}

/// Per-row label-smoothed cross-entropy of `(n, V)` logits against `(n,)` u32 targets.
///
/// Returns `(smoothed (n,), nll (n,), correct (n,))`; only `smoothed` carries a gradient,
/// `correct` is 1.0 where the argmax is the target.
///
/// # Shapes
/// logits `(n, V)`, target `(n,)` u32 → three `(n,)` tensors.
pub fn label_smoothed_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    epsilon: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    crate::enter("label-smoothed cross-entropy", &[logits])?;
    let out = logits.contiguous()?.apply_op2(
        &target.contiguous()?,
        SmoothedCrossEntropy {
            epsilon: epsilon as f32,
        },
    )?; // (n, 3)
    split_stats(out)
}

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
    crate::enter("projected cross-entropy", &[hidden, weight])?;
    let out = hidden.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &target.contiguous()?,
        ProjectedCrossEntropy {
            epsilon: epsilon as f32,
            probs: std::sync::Mutex::new(None),
        },
    )?; // (n, 3)
    split_stats(out)
}
