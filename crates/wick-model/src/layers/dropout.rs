//! Seeded inverted dropout.
//!
//! Candle's CPU random generator cannot be seeded, so masks are drawn on the host from a
//! shared ChaCha stream that the trainer seeds and can snapshot: a resumed run draws exactly
//! the masks the uninterrupted run would have. Each mask takes one 64-bit key from that
//! stream and expands it with SplitMix64 over the element index, in parallel: element `i`
//! depends only on the key and `i`, so the mask is the same whatever the thread count. (Drawing
//! every element from ChaCha on one thread cost a quarter of a training step on the Multi30k
//! recipe, whose dropout covers ~45M values per step.)

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

    /// Restarts this stream from a key drawn from `parent`: a second stream whose draws
    /// follow from `parent`'s state (a training step's other shards; see `wick_train::step`).
    pub fn reseed_from(&self, parent: &DropoutRng) -> Result<()> {
        if Arc::ptr_eq(&self.0, &parent.0) {
            candle_core::bail!("dropout: a stream cannot be reseeded from itself")
        }
        let key: u64 = parent.lock()?.random();
        *self.lock()? = ChaCha8Rng::seed_from_u64(key);
        Ok(())
    }

    /// A `{0, 1/(1-p)}` mask of `n` values.
    fn mask(&self, n: usize, p: f32) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 14;
        let key: u64 = self.lock()?.random();
        let keep = 1.0 / (1.0 - p);
        // Drop when the top 32 bits of the hash fall below p·2³².
        let threshold = (p as f64 * 4_294_967_296.0) as u64;
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = (c * CHUNK) as u64;
                for (j, v) in chunk.iter_mut().enumerate() {
                    let h =
                        splitmix64(key.wrapping_add((base + j as u64 + 1).wrapping_mul(GOLDEN)));
                    *v = if (h >> 32) < threshold { 0.0 } else { keep };
                }
            });
        Ok(out)
    }
}

/// SplitMix64's increment (2⁶⁴/φ) and output mix (Steele, Lea & Flood, 2014).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
    /// multiply an `n`-element tensor by (fused ops apply it themselves).
    pub fn draw_mask(&self, n: usize) -> Result<Vec<f32>> {
        self.rng.mask(n, self.p)
    }

    /// The mask for `n` values when dropout is active in this mode, drawn from the stream;
    /// `None` (and nothing drawn) otherwise.
    pub fn mask_if_active(&self, n: usize, train: bool) -> Result<Option<Vec<f32>>> {
        if self.is_active(train) {
            Ok(Some(self.draw_mask(n)?))
        } else {
            Ok(None)
        }
    }

    /// Whether [`Dropout::forward_t`] changes anything in this mode.
    pub fn is_active(&self, train: bool) -> bool {
        train && self.p > 0.0
    }

    /// Identity unless `train`; then zeroes each element with probability `p` and scales the
    /// rest by `1/(1-p)`. Any shape.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self.mask_if_active(xs.elem_count(), train)? {
            Some(mask) => crate::ops::dropout(xs, mask),
            None => Ok(xs.clone()),
        }
    }

    /// `residual + self.forward_t(xs, train)`: the residual sum of a block, with dropout on
    /// its branch (one node on the kernel path). Same values and gradients as the two ops it
    /// replaces (same mask, same arithmetic).
    ///
    /// # Shapes
    /// residual and xs: the same shape.
    pub fn add_to(&self, residual: &Tensor, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mask = self.mask_if_active(xs.elem_count(), train)?;
        crate::ops::residual_add(residual, xs, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_at_the_rate_and_follow_the_stream() -> Result<()> {
        let rng = DropoutRng::new(3);
        let d = Dropout::new(0.3, rng.clone());
        let n = 200_000;
        let a = d.draw_mask(n)?;
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.3).abs() < 0.005, "dropped {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        // Consecutive masks differ; a restored stream repeats them.
        let saved = rng.state()?;
        let b = d.draw_mask(n)?;
        assert_ne!(a, b);
        rng.restore(saved)?;
        assert_eq!(d.draw_mask(n)?, b);
        // Neighbouring elements are not correlated (a weak hash would show it here).
        let both = a.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64;
        assert!((both / n as f64 - 0.09).abs() < 0.005);
        Ok(())
    }

    #[test]
    fn dropout_add_equals_dropout_then_add() -> Result<()> {
        // On the kernel path the sum and the mask are one node; on the reference path two
        // Candle ops. The same mask and arithmetic either way: equal bit for bit.
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let r = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 33), &dev)?)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 33), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (3, 7, 33), &dev)?;
        let rng = DropoutRng::new(11);
        let d = Dropout::new(0.3, rng.clone());
        let saved = rng.state()?;
        let fused = d.add_to(r.as_tensor(), x.as_tensor(), true)?;
        let gf = (&fused * &w)?.sum_all()?.backward()?;
        rng.restore(saved)?;
        let composed = (r.as_tensor() + d.forward_t(x.as_tensor(), true)?)?;
        let gc = (&composed * &w)?.sum_all()?.backward()?;
        // Same mask and the same arithmetic: equal bit for bit.
        assert_eq!(
            fused.flatten_all()?.to_vec1::<f32>()?,
            composed.flatten_all()?.to_vec1::<f32>()?
        );
        for v in [&r, &x] {
            let (a, b) = (gf.get(v).unwrap(), gc.get(v).unwrap());
            assert_eq!(
                a.flatten_all()?.to_vec1::<f32>()?,
                b.flatten_all()?.to_vec1::<f32>()?
            );
        }
        // Some branch values were dropped, and the residual always passes.
        let dx = gf.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert!(dx.contains(&0.0));
        // Off in eval mode: a plain sum.
        let eval = d.add_to(r.as_tensor(), x.as_tensor(), false)?;
        let sum = (r.as_tensor() + x.as_tensor())?;
        assert_eq!(
            eval.flatten_all()?.to_vec1::<f32>()?,
            sum.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
