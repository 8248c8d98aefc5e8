//! Position-wise feed-forward block: `fc2(dropout(relu(fc1(x))))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Dropout, DropoutRng, Linear};

#[derive(Clone, Debug)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl FeedForward {
    pub fn new(
        d_model: usize,
        d_ff: usize,
        p: f32,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(d_model, d_ff, true, vb.pp("fc1"))?,
            fc2: Linear::new(d_ff, d_model, true, vb.pp("fc2"))?,
            dropout: Dropout::new(p, rng),
        })
    }

    /// A copy laid out for decoding (`Linear::for_decoding`).
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            fc1: self.fc1.for_decoding()?,
            fc2: self.fc2.for_decoding()?,
            dropout: self.dropout.clone(),
        })
    }

    /// # Shapes
    /// `(b, t, d)` → `(b, t, d)`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = if self.dropout.is_active(train) {
            // The same mask, drawn at the same point of the stream, as a separate dropout
            // after the ReLU would draw; folded into fc1's node.
            let (d_ff, _) = self.fc1.dims()?;
            let n = xs.elem_count() / xs.dim(candle_core::D::Minus1)? * d_ff;
            self.fc1
                .forward_relu_dropout(xs, self.dropout.draw_mask(n)?)?
        } else {
            self.fc1.forward_relu(xs)?
        }; // (b, t, d_ff)
        self.fc2.forward(&hidden)
    }

    /// [`FeedForward::forward_t`] with the ReLU and the dropout as separate nodes (the tests'
    /// reference for the fused form).
    pub fn forward_t_reference(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = self.fc1.forward_relu(xs)?;
        self.fc2.forward(&self.dropout.forward_t(&hidden, train)?)
    }
}
