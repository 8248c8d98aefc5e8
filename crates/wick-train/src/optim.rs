//! AdamW (Loshchilov & Hutter, 2019) with weight decay on weight matrices only, and moments
//! that can be saved and restored. Written by hand because candle-nn's `AdamW` decays every
//! variable and does not expose its moments.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

struct Param {
    name: String,
    var: Var,
    /// First and second moments, same shape as the parameter.
    m: Tensor,
    v: Tensor,
    decay: bool,
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
                let zeros = var.as_tensor().zeros_like()?.detach();
                Ok(Param {
                    decay: var.rank() >= 2,
                    name,
                    m: zeros.clone(),
                    v: zeros,
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
        let mut sum: Option<Tensor> = None;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let s = g.sqr()?.sum_all()?;
                sum = Some(match sum {
                    Some(acc) => (acc + s)?,
                    None => s,
                });
            }
        }
        match sum {
            Some(s) => Ok((s.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?).sqrt()),
            None => Ok(0.0),
        }
    }

    /// One update with learning rate `lr`; every gradient is multiplied by `grad_scale` first
    /// (gradient clipping folded into the update instead of a separate pass).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
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
            p.m = ((&p.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&p.m / bias1)? / ((&p.v / bias2)?.sqrt()? + self.eps)?)?;
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

    /// Moments by `"{name}.m"` / `"{name}.v"` (for checkpoints).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("{}.m", p.name), p.m.clone());
            out.insert(format!("{}.v", p.name), p.v.clone());
        }
        out
    }

    /// Restores moments saved by [`Self::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            for (suffix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
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
                *slot = t.to_device(p.var.device())?.detach();
            }
        }
        self.step = step;
        Ok(())
    }
}
