//! Label-smoothed cross-entropy over real (unpadded) target tokens.
//!
//! The smoothed target puts `1 − ε` on the reference token and spreads `ε` uniformly over the
//! vocabulary, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`:
//! `loss = (1 − ε)·(−log p_y) + ε·mean_v(−log p_v)`. The one-hot or smoothed target matrix is
//! never built.

use candle_core::{Result, Tensor};

use crate::model::OutputLayer;

/// Summed losses of a batch; divide by the number of target tokens to normalise.
#[derive(Debug)]
pub struct LossSums {
    /// Σ label-smoothed loss over real tokens (scalar, differentiable).
    pub smoothed: Tensor,
    /// Σ −log p(reference) over real tokens (scalar): perplexity = exp(nll / tokens).
    pub nll: Tensor,
    /// Σ [argmax = reference] over real tokens (scalar).
    pub correct: Tensor,
}

/// # Shapes
/// logits `(b, t, V)`, target `(b, t)` u32, mask `(b, t)` f32 → scalars.
pub fn label_smoothed_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    epsilon: f64,
) -> Result<LossSums> {
    let (b, t, v) = logits.dims3()?;
    check_targets("logits", logits, target, mask)?;
    let n = b * t;
    let logits = logits.reshape((n, v))?; // (n, V)
    let (per_token, nll, hits) =
        crate::ops::label_smoothed_cross_entropy(&logits, &target.reshape(n)?, epsilon)?;
    masked_sums(per_token, nll, hits, &mask.reshape(n)?)
}

/// The same sums from the decoder states and the output layer, with the projection fused
/// into the loss (on the kernel path the `(b, t, V)` logits are never a tensor; see
/// [`crate::ops::projected_cross_entropy`]).
///
/// # Shapes
/// hidden `(b, t, d)`, output weight `(V, d)`, target `(b, t)` u32, mask `(b, t)` f32 →
/// scalars.
pub fn projected_label_smoothed_cross_entropy(
    hidden: &Tensor,
    output: &OutputLayer,
    target: &Tensor,
    mask: &Tensor,
    epsilon: f64,
) -> Result<LossSums> {
    let (b, t, d) = hidden.dims3()?;
    check_targets("hidden", hidden, target, mask)?;
    let n = b * t;
    let (per_token, nll, hits) = crate::ops::projected_cross_entropy(
        &hidden.reshape((n, d))?,
        &output.weight,
        output.bias.as_ref(),
        &target.reshape(n)?,
        epsilon,
    )?;
    masked_sums(per_token, nll, hits, &mask.reshape(n)?)
}

/// `target` and `mask` must be `(b, t)` for `scores` `(b, t, ·)`.
fn check_targets(what: &str, scores: &Tensor, target: &Tensor, mask: &Tensor) -> Result<()> {
    let (b, t, _) = scores.dims3()?;
    if target.dims() != [b, t] || mask.dims() != [b, t] {
        candle_core::bail!(
            "loss: {what} {:?} does not match target {:?} / mask {:?}",
            scores.dims(),
            target.dims(),
            mask.dims()
        )
    }
    Ok(())
}

/// Sums of per-token `(n,)` values over the real tokens of `mask` `(n,)`.
fn masked_sums(per_token: Tensor, nll: Tensor, hits: Tensor, mask: &Tensor) -> Result<LossSums> {
    Ok(LossSums {
        smoothed: (per_token * mask)?.sum_all()?,
        nll: (nll * mask)?.sum_all()?,
        correct: (hits * mask)?.sum_all()?,
    })
}
