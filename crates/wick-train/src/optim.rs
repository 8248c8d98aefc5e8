//! AdamW (Loshchilov & Hutter, 2019) with weight decay on weight matrices only, and moments
//! that can be saved and restored. Written by hand because candle-nn's `AdamW` decays every
//! variable and does not expose its moments.
//!
//! On the kernel path an update is two in-place passes per parameter (moments, then weights;
//! `wick_kernels::adamw`) instead of about a dozen Candle ops that each allocate a
//! parameter-sized tensor; the composed form ([`AdamW::step_composed`]) runs elsewhere and is
//! the tests' reference.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use wick_kernels::adamw::{self, Coefficients};
use wick_model::ops;

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

    /// Σ g² over the gradients of all parameters: in f64 on the host where the kernels run,
    /// else as a scalar f32 tensor on the gradients' device (never F64 there: Metal has none).
    fn grad_square_sum(&self, grads: &GradStore) -> Result<(f64, Option<Tensor>)> {
        let mut host = 0f64;
        let mut device: Option<Tensor> = None;
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if ops::use_kernels(g) {
                host += adamw::sum_squares(&g.contiguous()?)?;
                continue;
            }
            let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            device = Some(match device {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
        Ok((host, device))
    }

    /// Global L2 norm of the gradients of all parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        Ok(self.loss_and_grad_norm(None, grads)?.1)
    }

    /// An update's loss (a scalar tensor) and the global gradient norm on the host, in one
    /// read from the device: the read an update cannot do without, since clipping and the
    /// check for a non-finite update come before the update is applied.
    pub fn loss_and_grad_norm(
        &self,
        loss: Option<&Tensor>,
        grads: &GradStore,
    ) -> Result<(f64, f64)> {
        let (host, device) = self.grad_square_sum(grads)?;
        let loss_part = loss
            .map(|l| l.to_dtype(DType::F32)?.reshape(1))
            .transpose()?;
        let device_part = device.map(|d| d.reshape(1)).transpose()?;
        let parts: Vec<&Tensor> = loss_part.iter().chain(device_part.iter()).collect();
        let read = match parts.is_empty() {
            true => Vec::new(),
            false => Tensor::cat(&parts, 0)?.to_vec1::<f32>()?,
        };
        let mut read = read.into_iter().map(f64::from);
        let loss = match loss_part {
            Some(_) => read.next().unwrap_or(f64::NAN),
            None => 0.0,
        };
        let device_sum = read.next().unwrap_or(0.0);
        Ok((loss, (host + device_sum).sqrt()))
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
            .all(|p| ops::use_kernels(p.var.as_tensor()));
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
            adamw::update_moments(&p.moments, g, c)?;
            adamw::apply_update(p.var.as_tensor(), &p.moments, Coefficients { keep, ..c })?;
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
