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
    weight: Weight,
    /// `(out,)`
    bias: Option<Tensor>,
}

/// The weight as trained, or (in copies made by [`Linear::for_decoding`]) laid out for
/// decoding in its place: a decoding copy does not keep the f32 weight beside its layout, so
/// that a translator holds each weight once.
#[derive(Clone, Debug)]
enum Weight {
    /// `(out, in)`, as in PyTorch.
    Trained(Tensor),
    LaidOut(LaidOut),
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
            weight: Weight::Trained(weight),
            bias,
        }
    }

    /// The weight `(out, in)`; an error for a copy laid out for decoding, which keeps only
    /// its layout ([`Linear::laid_out`]).
    pub fn weight(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Trained(w) => Ok(w),
            Weight::LaidOut(_) => candle_core::bail!(
                "linear layer: a copy laid out for decoding keeps no f32 weight (use the trained model)"
            ),
        }
    }

    /// The weight's `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Trained(w) => w.dims2(),
            Weight::LaidOut(l) => l.dims(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight's layout for decoding, in a copy made by [`Linear::for_decoding`].
    pub fn laid_out(&self) -> Option<&LaidOut> {
        match &self.weight {
            Weight::Trained(_) => None,
            Weight::LaidOut(l) => Some(l),
        }
    }

    /// A copy of the layer for inference (decoding steps, and the encoder before them), with
    /// the weight laid out in advance ([`ops::lay_out_for_decoding`]). `gemm` packs an
    /// operand that is not in its kernel's layout on every call, and with the few rows of a
    /// decoding step that packing of W took a fifth of a step (perf, small preset, greedy,
    /// one thread). The copy holds the layout instead of the f32 weight, so it does not keep
    /// the trained weight alive and later updates to it are not seen; its products have no
    /// backward. The weights are stored in the thread's weight format
    /// ([`ops::with_weight_format`]: f32, or int8). A layer already laid out is returned as
    /// it is (a clone), whatever the format.
    pub fn for_decoding(&self) -> Result<Self> {
        match &self.weight {
            Weight::LaidOut(_) => Ok(self.clone()),
            Weight::Trained(w) => Ok(Self {
                weight: Weight::LaidOut(ops::lay_out_for_decoding(w)?),
                bias: self.bias.clone(),
            }),
        }
    }

    fn apply(&self, xs: &Tensor, relu: bool) -> Result<Tensor> {
        match &self.weight {
            Weight::LaidOut(l) => ops::affine_laid_out(xs, l, self.bias.as_ref(), relu),
            Weight::Trained(w) => ops::affine(xs, w, self.bias.as_ref(), relu, None),
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
        ops::affine(xs, self.weight()?, self.bias.as_ref(), true, Some(mask))
    }
}

impl Module for Linear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`; leading dims are flattened into one product.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs, false)
    }
}
