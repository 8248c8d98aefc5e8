//! Additive attention biases. Masks arrive as `{1, 0}` float tensors from the batch (1 = real
//! token); attention adds `0` to visible and `MASKED` to hidden scores. A finite value keeps
//! rows that are fully masked (padded queries) free of NaN, and `exp(MASKED - max)` is exactly
//! zero in f32, so padding cannot leak into real positions.

use candle_core::{DType, Device, Result, Tensor};

pub const MASKED: f64 = -1e9;

/// `(b, s)` key mask → `(b, 1, 1, s)` additive bias, broadcast over heads and queries.
pub fn key_padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    ((mask.to_dtype(DType::F32)? - 1.0)? * -MASKED)?.reshape((b, 1, 1, s))
}

/// `(1, 1, t, t)` bias hiding future positions: query `i` sees keys `0..=i`.
pub fn causal_bias(t: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { MASKED as f32 } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (1, 1, t, t), device)
}
