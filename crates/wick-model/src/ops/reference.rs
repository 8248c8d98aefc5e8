//! The composed reference twin of every kernel: Candle ops only, so it runs on every device
//! Candle supports, in every dtype, with Candle's own autograd. The kernels are held to these
//! functions by the tests; CUDA and Metal run them.
//!
//! Nothing here calls a kernel, directly or through [`super`]'s dispatch: a twin must stay a
//! reference whatever the thread's settings.

use candle_core::{D, Result, Tensor, bail};

/// Softmax over the last dimension (max-shifted, differentiable).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, D::Minus1)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(xs, D::Minus1)
}

/// Index of the first maximum along the last dimension.
pub fn argmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.argmax(D::Minus1)
}

/// `(x − μ)/σ · w + b` over the last dimension.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    centred
        .broadcast_mul(&inv_std)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// `(smoothed, nll, correct)` per row of `(n, V)` logits against `(n,)` targets, where
/// smoothed = (1 − ε)·nll + ε·mean_v(−log p_v).
pub fn label_smoothed_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    epsilon: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let log_probs = log_softmax_last_dim(logits)?; // (n, V)
    let nll = log_probs
        .gather(&target.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?; // (n,)
    let smoothed = if epsilon > 0.0 {
        let uniform = log_probs.mean(D::Minus1)?.neg()?;
        ((&nll * (1.0 - epsilon))? + (uniform * epsilon)?)?
    } else {
        nll.clone()
    };
    let correct = logits
        .detach()
        .argmax(D::Minus1)?
        .eq(target)?
        .to_dtype(logits.dtype())?;
    Ok((smoothed, nll.detach(), correct))
}

/// `xᵀ`, contiguous.
pub fn transpose_contiguous(x: &Tensor) -> Result<Tensor> {
    x.t()?.contiguous()
}

/// The rows of `x` `(…, in)` as a matrix `(rows, in)`, and the output dims for `out` columns.
fn rows_of(x: &Tensor, d_in: usize, d_out: usize) -> Result<(Tensor, Vec<usize>)> {
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&d_in) {
        bail!("linear: input {dims:?} does not end in {d_in}")
    }
    let rows = x.elem_count() / d_in.max(1);
    if let Some(last) = dims.last_mut() {
        *last = d_out;
    }
    Ok((x.reshape((rows, d_in))?, dims))
}

/// `y (rows, out)` plus the bias, the ReLU and the mask, reshaped to `dims`.
fn finish_affine(
    y: Tensor,
    b: Option<&Tensor>,
    relu: bool,
    mask: Option<Vec<f32>>,
    dims: Vec<usize>,
) -> Result<Tensor> {
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let y = if relu { y.relu()? } else { y };
    let y = match mask {
        Some(mask) => dropout(&y, mask)?,
        None => y,
    };
    y.reshape(dims)
}

/// `x·Wᵀ + b`, then the ReLU and the mask where asked.
///
/// # Shapes
/// x `(…, in)`, w `(out, in)`, b `(out,)` → `(…, out)`.
pub fn affine(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    let (d_out, d_in) = w.dims2()?;
    let (x2, dims) = rows_of(x, d_in, d_out)?;
    let y = x2.matmul(&w.t()?)?; // (rows, out)
    finish_affine(y, b, relu, mask, dims)
}

/// [`affine`] with the weight given transposed, `wt` `(in, out)`.
pub fn affine_transposed(
    x: &Tensor,
    wt: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (d_in, d_out) = wt.dims2()?;
    let (x2, dims) = rows_of(x, d_in, d_out)?;
    finish_affine(x2.matmul(wt)?, b, relu, None, dims)
}

/// [`affine_transposed`] as the int8 kernel computes it: each row of `x` scaled so that its
/// largest magnitude is 127, rounded, and scaled back before the product with the
/// dequantized weight `wt` `(in, out)`. Rounding is half away from zero, which the kernel's
/// inputs follow too. The kernel sums the integers exactly and scales once; this sums the
/// scaled values in f32, so the two agree to float rounding.
pub fn affine_int8(x: &Tensor, wt: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let (d_in, d_out) = wt.dims2()?;
    let (x2, dims) = rows_of(x, d_in, d_out)?;
    let amax = x2.abs()?.max_keepdim(1)?; // (rows, 1)
    // An all-zero row keeps the scale 1 (its values stay 0).
    let amax = (&amax + amax.eq(0.0)?.to_dtype(x2.dtype())?)?;
    // 127 / amax, divided as the kernel divides (not 127 · (1 / amax), one rounding more),
    // so that both scale every value to the same float before rounding.
    let scale = Tensor::full(127f32, (), x2.device())?
        .to_dtype(x2.dtype())?
        .broadcast_div(&amax)?;
    let xq = x2
        .broadcast_mul(&scale)?
        .round()?
        .clamp(-127f32, 127f32)?
        .broadcast_div(&scale)?;
    finish_affine(xq.matmul(wt)?, b, relu, None, dims)
}

/// The mask as a tensor of `x`'s shape, dtype and device. Masks are drawn on the host from
/// the model's seeded stream and copied to the device, one per dropout.
fn mask_tensor(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if mask.len() != x.elem_count() {
        bail!(
            "dropout: mask of {} for {} values",
            mask.len(),
            x.elem_count()
        )
    }
    Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// `x ⊙ mask`.
pub fn dropout(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    x.mul(&mask_tensor(x, mask)?)
}

/// `residual + x`, or `residual + mask ⊙ x`.
pub fn residual_add(residual: &Tensor, x: &Tensor, mask: Option<Vec<f32>>) -> Result<Tensor> {
    match mask {
        Some(mask) => residual + dropout(x, mask)?,
        None => residual + x,
    }
}

/// `table[ids] · scale + positions[offset .. offset + t]`.
pub fn embed(
    ids: &Tensor,
    table: &Tensor,
    scale: f64,
    positions: &Tensor,
    offset: usize,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let (_, d) = table.dims2()?;
    let rows = table.index_select(&ids.flatten_all()?, 0)?; // (b·t, d)
    let scaled = (rows.reshape((b, t, d))? * scale)?;
    scaled.broadcast_add(&positions.narrow(0, offset, t)?)
}

/// `(b, t, ·)` columns `col..col + d` → `(b, h, t, d/h)`.
fn heads_of(xs: &Tensor, col: usize, d: usize, heads: usize) -> Result<Tensor> {
    let (b, t, _) = xs.dims3()?;
    xs.narrow(D::Minus1, col, d)?
        .reshape((b, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Multi-head attention composed from Candle ops: the output `(b, tq, d)` and the
/// probabilities `(b, h, tq, tk)`; `on_probs` is applied to the probabilities before they
/// weight V (attention dropout). Only the first `d` columns of `q` are read.
///
/// # Shapes
/// q `(b, tq, w ≥ d)`, kv `(b, tk, 2·d)`, bias `(1|b, 1, 1|tq, tk)`.
pub fn attention_with_probs(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    on_probs: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let d = kv.dim(D::Minus1)? / 2;
    let (b, tq, _) = q.dims3()?;
    let qh = heads_of(q, 0, d, heads)?;
    let kh = heads_of(kv, 0, d, heads)?;
    let vh = heads_of(kv, d, d, heads)?;
    // Scaling q is cheaper than scaling the scores.
    let qh = (qh * ((d / heads) as f64).powf(-0.5))?;
    let scores = qh.matmul(&kh.t()?)?.broadcast_add(bias)?; // (b, h, tq, tk)
    let probs = softmax_last_dim(&scores)?;
    let out = on_probs(&probs)?.matmul(&vh)?; // (b, h, tq, dk)
    let out = out.transpose(1, 2)?.reshape((b, tq, d))?; // reshape copies the transposed layout
    Ok((out, probs))
}

/// Multi-head attention from queries to packed keys/values, with a dropout mask on the
/// probabilities.
pub fn attention(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    let on_probs = |p: &Tensor| match mask {
        Some(mask) => dropout(p, mask),
        None => Ok(p.clone()),
    };
    Ok(attention_with_probs(q, kv, bias, heads, on_probs)?.0)
}

/// Multi-head self-attention from a packed projection `(b, t, 3·d)`.
pub fn attention_qkv(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    let d = qkv.dim(D::Minus1)? / 3;
    attention(
        &qkv.narrow(D::Minus1, 0, d)?,
        &qkv.narrow(D::Minus1, d, 2 * d)?,
        bias,
        heads,
        mask,
    )
}

/// A GRU step from its two projections: `(b, 3H)`, `(b, 3H)`, h `(b, H)` → `(b, H)`.
pub fn gru_cell(gi: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    let d = h.dim(D::Minus1)?;
    let rz = candle_nn::ops::sigmoid(
        &(gi.narrow(D::Minus1, 0, 2 * d)? + gh.narrow(D::Minus1, 0, 2 * d)?)?,
    )?;
    let r = rz.narrow(D::Minus1, 0, d)?;
    let z = rz.narrow(D::Minus1, d, d)?;
    let n = (gi.narrow(D::Minus1, 2 * d, d)? + (r * gh.narrow(D::Minus1, 2 * d, d)?)?)?.tanh()?;
    // (1 − z)·n + z·h = n + z·(h − n)
    &n + (z * (h - &n)?)?
}

/// An LSTM step from its two projections: `(b, 4H)`, `(b, 4H)`, c `(b, H)` → `[h' | c']`
/// `(b, 2H)`.
pub fn lstm_cell(gi: &Tensor, gh: &Tensor, c: &Tensor) -> Result<Tensor> {
    let d = c.dim(D::Minus1)?;
    let gates = (gi + gh)?;
    let i_f = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 0, 2 * d)?)?;
    let i = i_f.narrow(D::Minus1, 0, d)?;
    let f = i_f.narrow(D::Minus1, d, d)?;
    let g = gates.narrow(D::Minus1, 2 * d, d)?.tanh()?;
    let o = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 3 * d, d)?)?;
    let c_new = ((f * c)? + (i * g)?)?;
    let h_new = (o * c_new.tanh()?)?;
    Tensor::cat(&[&h_new, &c_new], D::Minus1)
}

/// Additive attention scores: keys `(b, s, H)`, q `(b, H)`, v `(H,)` → `(b, s)`.
pub fn additive_scores(keys: &Tensor, q: &Tensor, v: &Tensor) -> Result<Tensor> {
    keys.broadcast_add(&q.unsqueeze(1)?)?
        .tanh()?
        .broadcast_mul(&v.reshape((1, 1, ()))?)?
        .sum(D::Minus1)
}

/// The gated linear unit: `(…, 2h)` → `a ⊙ σ(b)` `(…, h)`.
pub fn glu(x: &Tensor) -> Result<Tensor> {
    let h = x.dim(D::Minus1)? / 2;
    x.narrow(D::Minus1, 0, h)? * candle_nn::ops::sigmoid(&x.narrow(D::Minus1, h, h)?)?
}

/// Weight normalisation: v `(out, in)`, g `(out, 1)` → `g ⊙ v / ‖v‖` row by row.
pub fn weight_norm(v: &Tensor, g: &Tensor) -> Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?; // (out, 1)
    v.broadcast_mul(&(g / norm)?)
}

/// `(b, t, h)` → `(b, t, kernel·h)`: the `kernel` shifted copies of `x` side by side, `left`
/// zeros before the sequence and `kernel − 1 − left` after it.
pub fn unfold(x: &Tensor, kernel: usize, left: usize) -> Result<Tensor> {
    let (b, t, h) = x.dims3()?;
    if kernel == 0 || left >= kernel {
        bail!("unfold: {left} zeros on the left of a {kernel}-tap window")
    }
    let right = kernel - 1 - left;
    let zeros = |n: usize| Tensor::zeros((b, n, h), x.dtype(), x.device());
    let mut parts = Vec::with_capacity(3);
    if left > 0 {
        parts.push(zeros(left)?);
    }
    parts.push(x.clone());
    if right > 0 {
        parts.push(zeros(right)?);
    }
    let padded = Tensor::cat(&parts, 1)?; // (b, t + k − 1, h)
    let taps: Vec<Tensor> = (0..kernel)
        .map(|j| padded.narrow(1, j, t))
        .collect::<Result<_>>()?;
    Tensor::cat(&taps, D::Minus1)
}
