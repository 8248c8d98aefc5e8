//! Affine layer `y = x·Wᵀ + b` with Xavier-uniform weights and zero bias.
//!
//! The product runs through [`crate::ops::affine`]: one autograd node on the CPU kernel path,
//! with the feed-forward's ReLU ([`Linear::forward_relu`]) and the dropout after it
//! ([`Linear::forward_relu_dropout`]) folded in; composed Candle ops elsewhere.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::init::xavier_uniform;
use crate::ops::{self, LaidOut};

#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`, as in PyTorch.
    weight: Tensor,
    /// `(out,)`
    bias: Option<Tensor>,
    /// The weight laid out for decoding, in copies made by [`Linear::for_decoding`].
    laid_out: Option<LaidOut>,
}

impl Linear {
    pub fn new(d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", xavier_uniform(d_in, d_out))?;
        let bias = if bias {
            Some(vb.get_with_hints(d_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::from_parts(weight, bias))
    }

    /// A layer over existing tensors: weight `(out, in)`, bias `(out,)`.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            laid_out: None,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight's layout for decoding, in a copy made by [`Linear::for_decoding`].
    pub fn laid_out(&self) -> Option<&LaidOut> {
        self.laid_out.as_ref()
    }

    /// A copy of the layer for inference (decoding steps, and the encoder before them), with
    /// the weight laid out in advance ([`ops::lay_out_for_decoding`]). `gemm` packs an
    /// operand that is not in its kernel's layout on every call, and with the few rows of a
    /// decoding step that packing of W took a fifth of a step (perf, small preset, greedy,
    /// one thread). Later updates to the trained weight are not seen by the copy; the copy's
    /// products have no backward. The weights are stored in the thread's weight format
    /// ([`ops::with_weight_format`]: f32, or int8). A layer already laid out is returned as
    /// it is (a clone), whatever the format.
    pub fn for_decoding(&self) -> Result<Self> {
        if self.laid_out.is_some() {
            return Ok(self.clone());
        }
        Ok(Self {
            laid_out: Some(ops::lay_out_for_decoding(&self.weight)?),
            ..self.clone()
        })
    }

    fn apply(&self, xs: &Tensor, relu: bool) -> Result<Tensor> {
        match &self.laid_out {
            Some(l) => ops::affine_laid_out(xs, &self.weight, l, self.bias.as_ref(), relu),
            None => ops::affine(xs, &self.weight, self.bias.as_ref(), relu, None),
        }
    }

    /// `max(x·Wᵀ + b, 0)`.
    ///
    /// # Shapes
    /// `(…, in)` → `(…, out)`
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs, true)
    }

    /// `max(x·Wᵀ + b, 0) ⊙ mask`: the ReLU followed by dropout with a drawn mask
    /// ([`crate::layers::Dropout::draw_mask`], one value per output element). Folding the
    /// dropout in saves its pass over the `(rows, out)` hidden values forward and backward,
    /// and the zeroed gradient buffer and sum Candle's backward spends on every node's input.
    ///
    /// # Shapes
    /// `(…, in)` → `(…, out)`; mask: as many values as the output.
    pub fn forward_relu_dropout(&self, xs: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
        ops::affine(xs, &self.weight, self.bias.as_ref(), true, Some(mask))
    }
}

impl Module for Linear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`; leading dims are flattened into one product.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs, false)
    }
}
