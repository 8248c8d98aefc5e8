//! Multi-head scaled dot-product attention, softmax(QKᵀ/√d_k)·V (Vaswani et al., 2017).
//!
//! Self-attention projects Q, K and V with one fused `(3d, d)` product; cross-attention
//! projects Q from the decoder and K, V with one fused `(2d, d)` product from the encoder
//! memory, which incremental decoding computes once per source. The attention core is
//! [`crate::ops::attention`] (the fused kernel on the CPU reads the heads in place from the
//! packed projections); attention maps come from the composed form, which returns the
//! probabilities.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cache::{KvCache, StepKvCache};
use crate::layers::{Dropout, DropoutRng, Linear};
use crate::ops::{self, reference::attention_with_probs};

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

    /// A copy with its projections laid out for decoding (`Linear::for_decoding`).
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            qkv_proj: self.qkv_proj.for_decoding()?,
            out_proj: self.out_proj.for_decoding()?,
            ..self.clone()
        })
    }

    /// Full-sequence self-attention. The fused kernel runs (attention dropout included)
    /// unless the probabilities are wanted.
    ///
    /// # Shapes
    /// xs `(b, t, d)`, bias `(1|b, 1, 1|t, t)` → `(b, t, d)` and, if `want_probs`, the
    /// probabilities `(b, h, t, t)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        train: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let qkv = self.qkv_proj.forward(xs)?; // (b, t, 3d)
        if !want_probs {
            let (b, t, _) = qkv.dims3()?;
            let mask = (self.dropout).mask_if_active(b * self.n_heads * t * t, train)?;
            let out = ops::attention_qkv(&qkv, bias, self.n_heads, mask)?;
            return Ok((self.out_proj.forward(&out)?, None));
        }
        let d = qkv.dim(D::Minus1)? / 3;
        let (out, probs) = attention_with_probs(
            &qkv.narrow(D::Minus1, 0, d)?,
            &qkv.narrow(D::Minus1, d, 2 * d)?,
            bias,
            self.n_heads,
            |p| self.dropout.forward_t(p, train),
        )?;
        Ok((self.out_proj.forward(&out)?, Some(probs)))
    }

    /// One decoding step: attends from the new positions to the cache plus themselves and
    /// appends their keys and values to the cache. No mask is needed because the cache holds
    /// only earlier positions.
    ///
    /// # Shapes
    /// xs `(b, 1, d)` → `(b, 1, d)`; the cache grows from `(b, t, 2·d)` to `(b, t+1, 2·d)`.
    pub fn forward_step(&self, xs: &Tensor, cache: &mut StepKvCache) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(xs)?; // (b, 1, 3d)
        let d = qkv.dim(D::Minus1)? / 3;
        // The buffer takes contiguous rows only.
        cache.append(&qkv.narrow(D::Minus1, d, 2 * d)?.contiguous()?)?;
        let Some(kv) = cache.kv()? else {
            candle_core::bail!("decoding cache: empty after an append")
        };
        let no_mask = Tensor::zeros((1, 1, 1, kv.dim(1)?), kv.dtype(), kv.device())?;
        // The packed QKV row serves as the query: the kernel reads its first d columns.
        let out = ops::attention(&qkv, &kv, &no_mask, self.n_heads, None)?;
        self.out_proj.forward(&out)
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

    /// A copy with its projections laid out for decoding (`Linear::for_decoding`), the
    /// memory's keys and values included (projected once per batch, for every sentence's
    /// source positions).
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            q_proj: self.q_proj.for_decoding()?,
            kv_proj: self.kv_proj.for_decoding()?,
            out_proj: self.out_proj.for_decoding()?,
            ..self.clone()
        })
    }

    /// Projects the encoder memory into packed keys and values.
    ///
    /// # Shapes
    /// memory `(b, s, d)` → `(b, s, 2·d)`.
    pub fn memory_kv(&self, memory: &Tensor) -> Result<KvCache> {
        Ok(KvCache {
            kv: self.kv_proj.forward(memory)?,
        })
    }

    /// One decoding step, for `g` consecutive rows of `xs` per memory row: beam search keeps
    /// the memory once per sentence, and its hypotheses query it together, as `g` queries of
    /// one sentence (which the attention kernel runs one at a time, exactly as it runs a
    /// single one). Keeping the memory once per hypothesis instead held its keys/values `beam`
    /// times and copied all of them whenever a sentence finished.
    ///
    /// # Shapes
    /// xs `(b, 1, d)`, memory K/V `(b / g, s, 2·d)`, bias `(b / g, 1, 1, s)` → `(b, 1, d)`.
    pub fn forward_step(&self, xs: &Tensor, memory_kv: &KvCache, bias: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(xs)?; // (b, 1, d)
        let (b, one, d) = q.dims3()?;
        let m = memory_kv.kv.dim(0)?;
        if one != 1 || m == 0 || b % m != 0 {
            candle_core::bail!(
                "cross-attention step: queries {:?} for {m} memory rows",
                q.dims()
            )
        }
        let q = q.reshape((m, b / m, d))?;
        let out = ops::attention(&q, &memory_kv.kv, bias, self.n_heads, None)?; // (m, g, d)
        self.out_proj.forward(&out.reshape((b, 1, d))?)
    }

    /// # Shapes
    /// xs `(b, t, d)`, memory K/V `(b, s, 2·d)`, bias `(b, 1, 1, s)` → `(b, t, d)` and, if
    /// `want_probs`, the probabilities `(b, h, t, s)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        memory_kv: &KvCache,
        bias: &Tensor,
        train: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let q = self.q_proj.forward(xs)?; // (b, t, d)
        if !want_probs {
            let (b, tq, _) = q.dims3()?;
            let tk = memory_kv.kv.dim(1)?;
            let mask = (self.dropout).mask_if_active(b * self.n_heads * tq * tk, train)?;
            let out = ops::attention(&q, &memory_kv.kv, bias, self.n_heads, mask)?;
            return Ok((self.out_proj.forward(&out)?, None));
        }
        let (out, probs) = attention_with_probs(&q, &memory_kv.kv, bias, self.n_heads, |p| {
            self.dropout.forward_t(p, train)
        })?;
        Ok((self.out_proj.forward(&out)?, Some(probs)))
    }
}
