//! Seeded inverted dropout.
//!
//! Candle's CPU random generator cannot be seeded, so masks are drawn on the host from a
//! shared ChaCha stream that the trainer seeds and can snapshot: a resumed run draws exactly
//! the masks the uninterrupted run would have.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random stream behind every dropout layer of one model.
#[derive(Clone, Debug)]
pub struct DropoutRng(Arc<Mutex<ChaCha8Rng>>);

impl Default for DropoutRng {
    fn default() -> Self {
        Self::new(0)
    }
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout rng lock poisoned".into()))
    }

    /// A copy of the current state (for checkpoints).
    pub fn state(&self) -> Result<ChaCha8Rng> {
        Ok(self.lock()?.clone())
    }

    /// Puts the stream back to a saved state.
    pub fn restore(&self, state: ChaCha8Rng) -> Result<()> {
        *self.lock()? = state;
        Ok(())
    }

    /// A `{0, 1/(1-p)}` mask of `n` values.
    fn mask(&self, n: usize, p: f32) -> Result<Vec<f32>> {
        let keep = 1.0 / (1.0 - p);
        let mut rng = self.lock()?;
        Ok((0..n)
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect())
    }
}

#[derive(Clone, Debug)]
pub struct Dropout {
    p: f32,
    rng: DropoutRng,
}

impl Dropout {
    pub fn new(p: f32, rng: DropoutRng) -> Self {
        Self { p, rng }
    }

    /// The next `n` mask values, `0` or `1/(1-p)`: exactly what [`Dropout::forward_t`] would
    /// multiply an `n`-element tensor by (fused kernels apply it themselves).
    pub fn draw_mask(&self, n: usize) -> Result<Vec<f32>> {
        self.rng.mask(n, self.p)
    }

    /// Whether [`Dropout::forward_t`] changes anything in this mode.
    pub fn is_active(&self, train: bool) -> bool {
        train && self.p > 0.0
    }

    /// Identity unless `train`; then zeroes each element with probability `p` and scales the
    /// rest by `1/(1-p)`. Any shape.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let mask = self.rng.mask(xs.elem_count(), self.p)?;
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs.mul(&mask)
    }
}
