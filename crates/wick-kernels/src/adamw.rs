//! The AdamW update (Loshchilov & Hutter, 2019) in place: two passes per parameter (moments,
//! then weights) instead of about a dozen Candle ops that each allocate a parameter-sized
//! tensor. The optimizer itself, and its composed twin, are `wick_train::optim`.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Storage, Tensor, bail};
use rayon::prelude::*;

use crate::storage::{CHUNK, slice, slice_mut};

/// One update's coefficients, in the f32 the kernels compute in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients {
    pub beta1: f32,
    pub beta2: f32,
    pub grad_scale: f32,
    pub bias1: f32,
    pub bias2: f32,
    pub eps: f32,
    pub lr: f32,
    /// `1 − lr·weight_decay`, or 1 for parameters that are not decayed.
    pub keep: f32,
}

/// The `(2, n)` moments of an `n`-element parameter.
fn check_moments(moments: usize, n: usize) -> Result<()> {
    if moments != 2 * n {
        bail!("AdamW: {moments} moments for a parameter of {n} elements")
    }
    Ok(())
}

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², with g the scaled gradient; in place on the
/// `(2, n)` moments.
struct UpdateMoments(Coefficients);

#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn moments_chunk(m: &mut [f32], v: &mut [f32], g: &[f32], c: Coefficients) {
    for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
        let g = g * c.grad_scale;
        *m = *m * c.beta1 + g * (1.0 - c.beta1);
        *v = *v * c.beta2 + g * g * (1.0 - c.beta2);
    }
}

impl InplaceOp2 for UpdateMoments {
    fn name(&self) -> &'static str {
        "wick-adamw-moments"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let mv = slice_mut(s1, l1, "AdamW moments")?;
        let g = slice(s2, l2, "AdamW gradient")?;
        check_moments(mv.len(), g.len())?;
        let (m, v) = mv.split_at_mut(g.len());
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((m, v), g)| moments_chunk(m, v, g, self.0));
        Ok(())
    }
}

/// θ ← keep·θ − lr·m̂/(√v̂ + ε), in place on the parameter.
struct ApplyUpdate(Coefficients);

#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn update_chunk(theta: &mut [f32], m: &[f32], v: &[f32], c: Coefficients) {
    for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
        let step = (m / c.bias1) / ((v / c.bias2).sqrt() + c.eps);
        *t = *t * c.keep - step * c.lr;
    }
}

impl InplaceOp2 for ApplyUpdate {
    fn name(&self) -> &'static str {
        "wick-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let theta = slice_mut(s1, l1, "AdamW parameter")?;
        let mv = slice(s2, l2, "AdamW moments")?;
        check_moments(mv.len(), theta.len())?;
        let (m, v) = mv.split_at(theta.len());
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((t, m), v)| update_chunk(t, m, v, self.0));
        Ok(())
    }
}

/// Σ x² of a contiguous f32 CPU tensor, in f64 across chunks; `None` for other tensors.
fn cpu_sum_squares(t: &Tensor) -> Option<f64> {
    #[multiversion::multiversion(targets("x86_64+avx2+fma"))]
    fn chunk_sum(x: &[f32]) -> f64 {
        // Eight f32 lanes so that the loop vectorises; a chunk is short enough for f32.
        let mut lanes = [0f32; 8];
        let mut blocks = x.chunks_exact(8);
        for b in &mut blocks {
            for (l, &v) in lanes.iter_mut().zip(b) {
                *l += v * v;
            }
        }
        let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
        lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    Some(data[a..b].par_chunks(CHUNK).map(chunk_sum).sum())
}

/// `moments` `(2, n)` ← the decayed first and second moments with gradient `grad` (n
/// values, times `c.grad_scale`), in place.
pub fn update_moments(moments: &Tensor, grad: &Tensor, c: Coefficients) -> Result<()> {
    crate::enter("adamw-moments", &[moments, grad])?;
    moments.inplace_op2(&grad.contiguous()?, &UpdateMoments(c))
}

/// `param` ← `c.keep · param − c.lr · m̂/(√v̂ + ε)` from the `(2, n)` `moments`, in place.
pub fn apply_update(param: &Tensor, moments: &Tensor, c: Coefficients) -> Result<()> {
    crate::enter("adamw-apply", &[param, moments])?;
    param.inplace_op2(moments, &ApplyUpdate(c))
}

/// Σ x² of `t` in f64 (partial sums of eight f32 lanes per chunk).
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    crate::enter("sum-squares", &[t])?;
    match cpu_sum_squares(t) {
        Some(s) => Ok(s),
        None => bail!("sum of squares: expected a contiguous tensor"),
    }
}
