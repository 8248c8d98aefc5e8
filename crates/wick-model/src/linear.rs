//! Affine layer `y = x·Wᵀ + b` with Xavier-uniform weights and zero bias.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::init::xavier_uniform;

#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`, as in PyTorch.
    weight: Tensor,
    /// `(out,)`
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", xavier_uniform(d_in, d_out))?;
        let bias = if bias {
            Some(vb.get_with_hints(d_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`; leading dims are flattened into one matmul.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (d_out, d_in) = self.weight.dims2()?;
        let dims = xs.dims().to_vec();
        if dims.last() != Some(&d_in) {
            candle_core::bail!("linear: input {dims:?} does not end in {d_in}")
        }
        let rows = xs.elem_count() / d_in;
        let x2 = xs.reshape((rows, d_in))?; // (rows, in)
        let y = x2.matmul(&self.weight.t()?)?; // (rows, out)
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = d_out;
        y.reshape(out_dims)
    }
}
