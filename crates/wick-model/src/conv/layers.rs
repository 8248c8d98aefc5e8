//! ConvS2S's building blocks: weight-normalised affine layers and gated convolutions.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::layers::Linear;

/// `y = x·Wᵀ + b` with `W = g · V / ‖V‖` row by row (weight normalisation, Salimans &
/// Kingma, 2016), parameters `weight_v (out, in)`, `weight_g (out, 1)`, `bias (out,)` as
/// PyTorch's `weight_norm` names them. `g` starts at `‖V‖`, so `W` starts as drawn.
#[derive(Clone, Debug)]
pub struct WeightNormLinear {
    v: Tensor,
    g: Tensor,
    bias: Tensor,
    /// `W` computed once and laid out, in copies made by [`Self::for_decoding`].
    fixed: Option<Linear>,
}

impl WeightNormLinear {
    /// `V ~ N(0, stdev²)`, as ConvS2S initialises each layer for the variance its input has.
    pub fn new(d_in: usize, d_out: usize, stdev: f64, vb: VarBuilder) -> Result<Self> {
        let fresh = !vb.contains_tensor("weight_g");
        let v = vb.get_with_hints((d_out, d_in), "weight_v", Init::Randn { mean: 0.0, stdev })?;
        let g = vb.get_with_hints((d_out, 1), "weight_g", Init::Const(1.0))?;
        if fresh {
            g.slice_set(&v.sqr()?.sum_keepdim(1)?.sqrt()?, 0, 0)?;
        }
        let bias = vb.get_with_hints(d_out, "bias", Init::Const(0.0))?;
        Ok(Self {
            v,
            g,
            bias,
            fixed: None,
        })
    }

    /// `W (out, in)`, differentiable in `V` and `g`.
    pub fn weight(&self) -> Result<Tensor> {
        crate::ops::weight_norm(&self.v, &self.g)
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// A copy with `W` computed once and laid out for decoding; it has no backward.
    pub fn for_decoding(&self) -> Result<Self> {
        let w = self.weight()?.detach();
        Ok(Self {
            fixed: Some(Linear::from_parts(w, Some(self.bias.clone())).for_decoding()?),
            ..self.clone()
        })
    }
}

impl Module for WeightNormLinear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.fixed {
            Some(layer) => layer.forward(xs),
            None => crate::ops::affine(xs, &self.weight()?, Some(&self.bias), false, None),
        }
    }
}

/// A 1-D convolution of `k` taps from `h_in` to `2·h_out` channels followed by a gated
/// linear unit, `A ⊙ σ(B)` (Dauphin et al., 2017). The convolution is one product over the
/// `k` shifted copies of the input side by side, so it runs on the same affine kernel as
/// every other layer; its weight's column block `j` is PyTorch's `Conv1d` tap `j`.
#[derive(Clone, Debug)]
pub struct GatedConv {
    proj: WeightNormLinear,
    kernel: usize,
}

impl GatedConv {
    /// `V ~ N(0, 4(1 − p)/(k·h_in))`, ConvS2S's initialisation for a GLU after dropout `p`.
    pub fn new(
        h_in: usize,
        h_out: usize,
        kernel: usize,
        dropout: f32,
        vb: VarBuilder,
    ) -> Result<Self> {
        let stdev = (4.0 * (1.0 - dropout as f64) / (kernel * h_in) as f64).sqrt();
        Ok(Self {
            proj: WeightNormLinear::new(kernel * h_in, 2 * h_out, stdev, vb)?,
            kernel,
        })
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }

    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            proj: self.proj.for_decoding()?,
            ..self.clone()
        })
    }

    /// The convolution of a sequence padded with `left` zeros before and `right` after
    /// (`left + right = k − 1`, so that the output has the input's length).
    ///
    /// # Shapes
    /// `(b, t, h_in)` → `(b, t, h_out)`
    pub fn forward(&self, xs: &Tensor, left: usize, right: usize) -> Result<Tensor> {
        if left + right + 1 != self.kernel {
            candle_core::bail!(
                "convolution of {} taps padded with {left} + {right} zeros",
                self.kernel
            )
        }
        self.window(&crate::ops::unfold(xs, self.kernel, left)?)
    }

    /// The gated product of ready windows: `(…, k·h_in)` → `(…, h_out)`.
    pub fn window(&self, windows: &Tensor) -> Result<Tensor> {
        crate::ops::glu(&self.proj.forward(windows)?)
    }
}
