//! Layer normalisation (Ba et al., 2016) over the last dimension.
//!
//! Runs [`crate::ops::layer_norm`]: candle-nn 0.11's fused `LayerNorm` has no backward and
//! silently cuts the autograd graph.

use candle_core::{D, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `(d,)`
    weight: Tensor,
    /// `(d,)`
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(d, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(d, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    /// # Shapes
    /// `(…, d)` → `(…, d)`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let d = self.weight.dim(0)?;
        if xs.dim(D::Minus1)? != d {
            candle_core::bail!("layer norm over {d} features got input {:?}", xs.dims())
        }
        crate::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}
