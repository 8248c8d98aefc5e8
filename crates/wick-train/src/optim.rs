//! AdamW (Loshchilov & Hutter, 2019) with weight decay on weight matrices only, and moments
//! that can be saved and restored. Written by hand because candle-nn's `AdamW` decays every
//! variable and does not expose its moments.
//!
//! On the CPU in f32 an update is two in-place passes per parameter (moments, then weights)
//! instead of about a dozen Candle ops that each allocate a parameter-sized tensor; that
//! composed form ([`AdamW::step_composed`]) stays for other devices and as the tests'
//! reference.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor, Var, bail};
use rayon::prelude::*;

struct Param {
    name: String,
    var: Var,
    /// `(2, n)`: the first moment, then the second, flattened; one tensor so that one in-place
    /// pass can update both.
    moments: Tensor,
    decay: bool,
}

impl Param {
    fn moment(&self, i: usize) -> Result<Tensor> {
        self.moments.get(i)?.reshape(self.var.shape())
    }
}

/// One update's coefficients, in the f32 the kernels compute in.
#[derive(Clone, Copy, Debug)]
struct Coefficients {
    beta1: f32,
    beta2: f32,
    grad_scale: f32,
    bias1: f32,
    bias2: f32,
    eps: f32,
    lr: f32,
    /// `1 − lr·weight_decay`, or 1 for parameters that are not decayed.
    keep: f32,
}

/// Elements per parallel task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("AdamW: {what} must be a contiguous f32 tensor"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("AdamW: {what} must be a contiguous f32 tensor"),
    }
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
fn update_moments(m: &mut [f32], v: &mut [f32], g: &[f32], c: Coefficients) {
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
        let mv = f32_slice_mut(s1, l1, "moments")?;
        let g = f32_slice(s2, l2, "gradient")?;
        check_moments(mv.len(), g.len())?;
        let (m, v) = mv.split_at_mut(g.len());
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((m, v), g)| update_moments(m, v, g, self.0));
        Ok(())
    }
}

/// θ ← keep·θ − lr·m̂/(√v̂ + ε), in place on the parameter.
struct ApplyUpdate(Coefficients);

#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn apply_update(theta: &mut [f32], m: &[f32], v: &[f32], c: Coefficients) {
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
        let theta = f32_slice_mut(s1, l1, "parameter")?;
        let mv = f32_slice(s2, l2, "moments")?;
        check_moments(mv.len(), theta.len())?;
        let (m, v) = mv.split_at(theta.len());
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((t, m), v)| apply_update(t, m, v, self.0));
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

pub struct AdamW {
    params: Vec<Param>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates applied so far.
    step: usize,
}

impl AdamW {
    /// `vars` by name; tensors of rank ≥ 2 are decayed, biases and norm gains are not.
    pub fn new(
        vars: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = Tensor::zeros((2, var.elem_count()), var.dtype(), var.device())?;
                Ok(Param {
                    decay: var.rank() >= 2,
                    name,
                    moments,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
        })
    }

    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Global L2 norm of the gradients of all parameters (one host sync).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut host = 0f64;
        let mut sum: Option<Tensor> = None;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                if let Some(s) = cpu_sum_squares(g) {
                    host += s;
                    continue;
                }
                let s = g.sqr()?.sum_all()?;
                sum = Some(match sum {
                    Some(acc) => (acc + s)?,
                    None => s,
                });
            }
        }
        if let Some(s) = sum {
            host += s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(host.sqrt())
    }

    fn coefficients(&self, lr: f64, grad_scale: f64) -> Coefficients {
        let t = self.step as i32;
        Coefficients {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            grad_scale: grad_scale as f32,
            bias1: (1.0 - self.beta1.powi(t)) as f32,
            bias2: (1.0 - self.beta2.powi(t)) as f32,
            eps: self.eps as f32,
            lr: lr as f32,
            keep: 1.0,
        }
    }

    /// One update with learning rate `lr`; every gradient is multiplied by `grad_scale` first
    /// (gradient clipping folded into the update instead of a separate pass).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let fused = self
            .params
            .iter()
            .all(|p| p.var.device().is_cpu() && p.var.dtype() == DType::F32);
        if !fused {
            return self.step_composed(grads, lr, grad_scale);
        }
        self.step += 1;
        let c = self.coefficients(lr, grad_scale);
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let keep = if p.decay && self.weight_decay > 0.0 {
                (1.0 - lr * self.weight_decay) as f32
            } else {
                1.0
            };
            p.moments.inplace_op2(&g.contiguous()?, &UpdateMoments(c))?;
            p.var
                .as_tensor()
                .inplace_op2(&p.moments, &ApplyUpdate(Coefficients { keep, ..c }))?;
        }
        Ok(())
    }

    /// [`Self::step`] composed from Candle tensor ops: any device and dtype, and the
    /// reference the fused CPU update is tested against.
    pub fn step_composed(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached so that the moments never hold a reference to this step's graph.
            let g = g.detach();
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            let m = ((p.moment(0)? * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((p.moment(1)? * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + self.eps)?)?;
            p.moments = Tensor::stack(&[m.flatten_all()?, v.flatten_all()?], 0)?;
            let theta = p.var.as_tensor().detach();
            let theta = if p.decay && self.weight_decay > 0.0 {
                (theta * (1.0 - lr * self.weight_decay))?
            } else {
                theta
            };
            p.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments by `"{name}.m"` / `"{name}.v"` (for checkpoints): views of the live moments,
    /// which the next [`Self::step`] overwrites in place, so write them out before it.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("{}.m", p.name), p.moment(0)?);
            out.insert(format!("{}.v", p.name), p.moment(1)?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Self::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            let mut moments = Vec::with_capacity(2);
            for suffix in ["m", "v"] {
                let key = format!("{}.{suffix}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks `{key}`"))
                })?;
                if t.shape() != p.var.shape() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        p.var.dims()
                    )
                }
                moments.push(
                    t.to_device(p.var.device())?
                        .to_dtype(p.var.dtype())?
                        .flatten_all()?,
                );
            }
            // A new tensor: the loaded ones are never updated in place.
            p.moments = Tensor::stack(&moments, 0)?.detach();
        }
        self.step = step;
        Ok(())
    }
}
