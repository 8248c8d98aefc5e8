//! One recurrent layer in one direction: GRU or LSTM weights in PyTorch's layout
//! (`weight_ih (G·H, in)`, `weight_hh (G·H, H)`, `bias_ih`, `bias_hh`, gate blocks `r, z, n`
//! or `i, f, g, o`), so that weights move between wick and `nn.GRU`/`nn.LSTM` unchanged.
//!
//! Input projections do not depend on the state: a whole sequence's are one product before
//! the loop ([`Recurrent::project_inputs`]), and each step adds only `h·W_hhᵀ`.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::config::Cell;
use crate::init::{orthogonal_blocks, xavier_uniform};
use crate::layers::Linear;

/// A recurrent state: `h (b, H)`, and for an LSTM its cell `c (b, H)`.
#[derive(Clone, Debug)]
pub struct State {
    pub h: Tensor,
    pub c: Option<Tensor>,
}

impl State {
    pub fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            h: f(&self.h)?,
            c: self.c.as_ref().map(&f).transpose()?,
        })
    }

    /// `self` where `keep` is 1, `old` where it is 0: a padded position leaves the state as
    /// it was. keep `(b, 1)`.
    fn keep_where(&self, keep: &Tensor, old: &State) -> Result<Self> {
        let mix = |new: &Tensor, old: &Tensor| -> Result<Tensor> {
            // old + keep·(new − old): exact for keep ∈ {0, 1}.
            old + (new - old)?.broadcast_mul(keep)?
        };
        Ok(Self {
            h: mix(&self.h, &old.h)?,
            c: match (&self.c, &old.c) {
                (Some(n), Some(o)) => Some(mix(n, o)?),
                _ => None,
            },
        })
    }
}

#[derive(Clone, Debug)]
pub struct Recurrent {
    cell: Cell,
    hidden: usize,
    /// `x·W_ihᵀ + b_ih`
    input: Linear,
    /// `h·W_hhᵀ + b_hh`
    recurrent: Linear,
}

impl Recurrent {
    /// Xavier-uniform input weights, orthogonal recurrent weights (each gate's `(H, H)` block
    /// on its own), zero biases but an LSTM's forget gate at 1 (Jozefowicz et al., 2015).
    pub fn new(cell: Cell, d_in: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let g = cell.gates() * hidden;
        let w_ih = vb.get_with_hints((g, d_in), "weight_ih", xavier_uniform(d_in, hidden))?;
        let fresh = !vb.contains_tensor("weight_hh");
        let w_hh = vb.get_with_hints(
            (g, hidden),
            "weight_hh",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        if fresh {
            orthogonal_blocks(&w_hh, hidden)?;
        }
        let b_ih = vb.get_with_hints(g, "bias_ih", Init::Const(0.0))?;
        let b_hh = vb.get_with_hints(g, "bias_hh", Init::Const(0.0))?;
        let b_ih = match cell {
            Cell::Lstm if fresh => {
                let ones = Tensor::ones(hidden, b_ih.dtype(), b_ih.device())?;
                b_ih.slice_set(&ones, 0, hidden)?;
                b_ih
            }
            _ => b_ih,
        };
        Ok(Self {
            cell,
            hidden,
            input: Linear::from_parts(w_ih, Some(b_ih)),
            recurrent: Linear::from_parts(w_hh, Some(b_hh)),
        })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            input: self.input.for_decoding()?,
            recurrent: self.recurrent.for_decoding()?,
            ..self.clone()
        })
    }

    /// A zero state for `b` rows.
    pub fn zeros(&self, like: &Tensor, b: usize) -> Result<State> {
        let z = Tensor::zeros((b, self.hidden), like.dtype(), like.device())?;
        Ok(State {
            h: z.clone(),
            c: matches!(self.cell, Cell::Lstm).then_some(z),
        })
    }

    /// # Shapes
    /// `(…, in)` → `(…, G·H)`
    pub fn project_inputs(&self, xs: &Tensor) -> Result<Tensor> {
        candle_core::Module::forward(&self.input, xs)
    }

    /// One step from projected inputs.
    ///
    /// # Shapes
    /// gi `(b, G·H)`, state `(b, H)` → `(b, H)`
    pub fn step(&self, gi: &Tensor, state: &State) -> Result<State> {
        let gh = candle_core::Module::forward(&self.recurrent, &state.h)?;
        match (self.cell, &state.c) {
            (Cell::Gru, _) => Ok(State {
                h: crate::ops::gru_cell(gi, &gh, &state.h)?,
                c: None,
            }),
            (Cell::Lstm, Some(c)) => {
                let (h, c) = crate::ops::lstm_cell(gi, &gh, c)?;
                Ok(State { h, c: Some(c) })
            }
            (Cell::Lstm, None) => candle_core::bail!("LSTM state without a cell"),
        }
    }

    /// Runs the layer over a padded batch, forwards or backwards in time, starting from zeros.
    /// A padded position neither changes the state nor has an output (zeros there), so the
    /// real positions' outputs and the final state are those of the unpadded sentence.
    ///
    /// # Shapes
    /// xs `(b, s, in)`, mask `(b, s)` → outputs `(b, s, H)`, final state `(b, H)`
    pub fn run(&self, xs: &Tensor, mask: &Tensor, backwards: bool) -> Result<(Tensor, State)> {
        let (b, s, _) = xs.dims3()?;
        // Time-major, so that each step's projections are one contiguous block.
        let gi = self.project_inputs(&xs.transpose(0, 1)?.contiguous()?)?; // (s, b, G·H)
        let mut state = self.zeros(xs, b)?;
        let mut outputs = Vec::with_capacity(s);
        let order: Vec<usize> = if backwards {
            (0..s).rev().collect()
        } else {
            (0..s).collect()
        };
        for t in order {
            let keep = mask.narrow(1, t, 1)?; // (b, 1)
            let new = self.step(&gi.get(t)?, &state)?;
            outputs.push(new.h.broadcast_mul(&keep)?);
            state = new.keep_where(&keep, &state)?;
        }
        if backwards {
            outputs.reverse();
        }
        Ok((Tensor::stack(&outputs, 1)?, state))
    }
}
