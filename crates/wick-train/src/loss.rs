//! Label-smoothed cross-entropy over real (unpadded) target tokens.
//!
//! The smoothed target puts `1 − ε` on the reference token and spreads `ε` uniformly over the
//! vocabulary, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`:
//! `loss = (1 − ε)·(−log p_y) + ε·mean_v(−log p_v)`. The one-hot or smoothed target matrix is
//! never built.

use candle_core::{D, Result, Tensor};

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
    if target.dims() != [b, t] || mask.dims() != [b, t] {
        candle_core::bail!(
            "loss: logits {:?} do not match target {:?} / mask {:?}",
            logits.dims(),
            target.dims(),
            mask.dims()
        )
    }
    let n = b * t;
    let logits = logits.reshape((n, v))?; // (n, V)
    let target = target.reshape((n, 1))?; // (n, 1)
    let mask = mask.reshape(n)?; // (n,)
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?; // (n, V)
    let nll = log_probs.gather(&target, 1)?.squeeze(1)?.neg()?; // (n,)
    let per_token = if epsilon > 0.0 {
        let uniform = log_probs.mean(D::Minus1)?.neg()?; // (n,)
        ((&nll * (1.0 - epsilon))? + (uniform * epsilon)?)?
    } else {
        nll.clone()
    };
    let smoothed = (per_token * &mask)?.sum_all()?;
    let nll_sum = (nll.detach() * &mask)?.sum_all()?;
    let hits = logits
        .detach()
        .argmax(D::Minus1)?
        .eq(&target.squeeze(1)?)?
        .to_dtype(mask.dtype())?;
    let correct = (hits * &mask)?.sum_all()?;
    Ok(LossSums {
        smoothed,
        nll: nll_sum,
        correct,
    })
}
