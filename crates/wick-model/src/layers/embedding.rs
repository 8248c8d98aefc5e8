//! Token embeddings scaled by √d_model and fixed sinusoidal positions (Vaswani et al., 2017).

use candle_core::{Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Clone, Debug)]
pub struct TokenEmbedding {
    /// `(vocab, d_model)`; also the output projection when embeddings are tied.
    weight: Tensor,
    scale: f64,
}

impl TokenEmbedding {
    /// Weights ~ N(0, d_model^-½), so that scaled embeddings have unit variance.
    pub fn new(vocab: usize, d_model: usize, vb: VarBuilder) -> Result<Self> {
        let stdev = (d_model as f64).powf(-0.5);
        let weight =
            vb.get_with_hints((vocab, d_model), "weight", Init::Randn { mean: 0.0, stdev })?;
        Ok(Self {
            weight,
            scale: (d_model as f64).sqrt(),
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Scaled embeddings plus the position rows `offset .. offset + t`.
    ///
    /// # Shapes
    /// ids `(b, t)` u32 → `(b, t, d_model)`
    pub fn forward_at(
        &self,
        ids: &Tensor,
        positions: &SinusoidalPositions,
        offset: usize,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        positions.check(offset, t)?;
        crate::ops::embed(ids, &self.weight, self.scale, &positions.table, offset)
    }

    /// # Shapes
    /// ids `(b, t)` u32 → `(b, t, d_model)`
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (_, d) = self.weight.dims2()?;
        let flat = ids.flatten_all()?; // (b·t,)
        let emb = self.weight.index_select(&flat, 0)?; // (b·t, d)
        emb.reshape((b, t, d))? * self.scale
    }
}

/// `pe[p, 2i] = sin(p / 10000^(2i/d))`, `pe[p, 2i+1] = cos(p / 10000^(2i/d))`.
#[derive(Clone, Debug)]
pub struct SinusoidalPositions {
    /// `(max_positions, d_model)`
    table: Tensor,
}

impl SinusoidalPositions {
    pub fn new(max_positions: usize, d_model: usize, device: &Device) -> Result<Self> {
        let mut data = vec![0f32; max_positions * d_model];
        for p in 0..max_positions {
            for i in 0..d_model / 2 {
                let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / d_model as f64);
                data[p * d_model + 2 * i] = angle.sin() as f32;
                data[p * d_model + 2 * i + 1] = angle.cos() as f32;
            }
        }
        Ok(Self {
            table: Tensor::from_vec(data, (max_positions, d_model), device)?,
        })
    }

    /// Positions `offset .. offset + len` as `(len, d_model)`.
    pub fn get(&self, offset: usize, len: usize) -> Result<Tensor> {
        self.check(offset, len)?;
        self.table.narrow(0, offset, len)
    }

    /// Positions `offset .. offset + len` are in the table.
    fn check(&self, offset: usize, len: usize) -> Result<()> {
        let max = self.table.dim(0)?;
        if offset + len > max {
            candle_core::bail!(
                "sequence of {} positions exceeds model.max_positions = {max}",
                offset + len
            )
        }
        Ok(())
    }
}
