//! Multi-head scaled dot-product attention, softmax(QKᵀ/√d_k)·V (Vaswani et al., 2017).
//!
//! Self-attention projects Q, K and V with one fused `(3d, d)` matmul; cross-attention
//! projects Q from the decoder and K, V with one fused `(2d, d)` matmul from the encoder
//! memory, which incremental decoding computes once per source. Heads are a batch dimension
//! of one batched matmul, never a loop.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::dropout::{Dropout, DropoutRng};
use crate::linear::Linear;

/// `(b, t, h·dk)` → `(b, h, t, dk)`, contiguous.
fn split_heads(xs: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (b, t, d) = xs.dims3()?;
    xs.reshape((b, t, n_heads, d / n_heads))? // (b, t, h, dk)
        .transpose(1, 2)? // (b, h, t, dk)
        .contiguous()
}

/// `(b, t, n·h·dk)` from a fused projection → `(n, b, h, t, dk)`: the `n` packed tensors
/// (Q, K, V or K, V) split into heads with one permute and one copy.
fn split_packed(packed: &Tensor, n: usize, n_heads: usize) -> Result<Tensor> {
    let (b, t, nd) = packed.dims3()?;
    let dk = nd / (n * n_heads);
    packed
        .reshape((b, t, n, n_heads, dk))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()
}

/// `(b, h, t, dk)` → `(b, t, h·dk)`.
fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (b, h, t, dk) = xs.dims4()?;
    xs.transpose(1, 2)?.reshape((b, t, h * dk)) // reshape copies the transposed layout
}

/// The attention core shared by self- and cross-attention.
///
/// # Shapes
/// q `(b, h, tq, dk)`, k and v `(b, h, tk, dk)`, bias broadcastable to `(b, h, tq, tk)` →
/// `(b, h, tq, dk)` and the probabilities `(b, h, tq, tk)`.
fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    dropout: &Dropout,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let dk = q.dim(D::Minus1)?;
    let q = (q * (dk as f64).powf(-0.5))?; // scaling q is cheaper than scaling the scores
    let scores = q.matmul(&k.t()?)?; // (b, h, tq, tk)
    let scores = match bias {
        Some(bias) => scores.broadcast_add(bias)?,
        None => scores,
    };
    let probs = crate::ops::softmax_last_dim(&scores)?;
    let out = dropout.forward_t(&probs, train)?.matmul(v)?; // (b, h, tq, dk)
    Ok((out, probs))
}

/// Keys and values cached for incremental decoding, `(b, h, t, dk)` each.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

impl KvCache {
    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            k: self.k.index_select(indices, 0)?,
            v: self.v.index_select(indices, 0)?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct SelfAttention {
    qkv_proj: Linear,
    out_proj: Linear,
    n_heads: usize,
    dropout: Dropout,
}

impl SelfAttention {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        p: f32,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            qkv_proj: Linear::new(d_model, 3 * d_model, true, vb.pp("qkv_proj"))?,
            out_proj: Linear::new(d_model, d_model, true, vb.pp("out_proj"))?,
            n_heads,
            dropout: Dropout::new(p, rng),
        })
    }

    /// `(b, t, d)` → Q, K, V as `(b, h, t, dk)` each, with one permute of the packed tensor.
    fn qkv(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let qkv = split_packed(&self.qkv_proj.forward(xs)?, 3, self.n_heads)?; // (3, b, h, t, dk)
        Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
    }

    /// Full-sequence self-attention.
    ///
    /// # Shapes
    /// xs `(b, t, d)`, bias broadcastable to `(b, h, t, t)` → `(b, t, d)` and, if asked, the
    /// probabilities `(b, h, t, t)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = self.qkv(xs)?;
        let (out, probs) = scaled_dot_product(&q, &k, &v, bias, &self.dropout, train)?;
        Ok((self.out_proj.forward(&merge_heads(&out)?)?, probs))
    }

    /// One decoding step: attends from the new positions to the cache plus themselves and
    /// appends their keys and values to the cache. No mask is needed because the cache holds
    /// only earlier positions.
    ///
    /// # Shapes
    /// xs `(b, 1, d)` → `(b, 1, d)`; the cache grows from `(b, h, t, dk)` to `(b, h, t+1, dk)`.
    pub fn forward_step(&self, xs: &Tensor, cache: &mut Option<KvCache>) -> Result<Tensor> {
        let (q, k, v) = self.qkv(xs)?;
        let (k, v) = match cache.take() {
            Some(c) => (Tensor::cat(&[&c.k, &k], 2)?, Tensor::cat(&[&c.v, &v], 2)?),
            None => (k, v),
        };
        let (out, _) = scaled_dot_product(&q, &k, &v, None, &self.dropout, false)?;
        *cache = Some(KvCache { k, v });
        self.out_proj.forward(&merge_heads(&out)?)
    }
}

#[derive(Clone, Debug)]
pub struct CrossAttention {
    q_proj: Linear,
    kv_proj: Linear,
    out_proj: Linear,
    n_heads: usize,
    dropout: Dropout,
}

impl CrossAttention {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        p: f32,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            q_proj: Linear::new(d_model, d_model, true, vb.pp("q_proj"))?,
            kv_proj: Linear::new(d_model, 2 * d_model, true, vb.pp("kv_proj"))?,
            out_proj: Linear::new(d_model, d_model, true, vb.pp("out_proj"))?,
            n_heads,
            dropout: Dropout::new(p, rng),
        })
    }

    /// Projects the encoder memory into keys and values.
    ///
    /// # Shapes
    /// memory `(b, s, d)` → K and V `(b, h, s, dk)`.
    pub fn memory_kv(&self, memory: &Tensor) -> Result<KvCache> {
        let kv = split_packed(&self.kv_proj.forward(memory)?, 2, self.n_heads)?; // (2, b, h, s, dk)
        Ok(KvCache {
            k: kv.get(0)?,
            v: kv.get(1)?,
        })
    }

    /// # Shapes
    /// xs `(b, t, d)`, memory K/V `(b, h, s, dk)`, bias `(b, 1, 1, s)` → `(b, t, d)` and the
    /// probabilities `(b, h, t, s)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        memory_kv: &KvCache,
        bias: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let q = split_heads(&self.q_proj.forward(xs)?, self.n_heads)?; // (b, h, t, dk)
        let (out, probs) = scaled_dot_product(
            &q,
            &memory_kv.k,
            &memory_kv.v,
            Some(bias),
            &self.dropout,
            train,
        )?;
        Ok((self.out_proj.forward(&merge_heads(&out)?)?, probs))
    }
}
