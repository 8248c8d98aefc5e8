//! Multi-head scaled dot-product attention, softmax(QKᵀ/√d_k)·V (Vaswani et al., 2017).
//!
//! Self-attention projects Q, K and V with one fused `(3d, d)` matmul; cross-attention
//! projects Q from the decoder and K, V with one fused `(2d, d)` matmul from the encoder
//! memory, which incremental decoding computes once per source. The attention core itself is
//! the fused kernel of [`crate::fused_attention`], which reads the heads in place from the
//! packed projections; the composed path serves attention maps and attention dropout.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::dropout::{Dropout, DropoutRng};
use crate::fused_attention::{attention_with_probs, cross_attention, self_attention};
use crate::linear::Linear;
use crate::ops::index_select_prefix;

/// Keys and values cached for incremental decoding: `(b, t, 2·d)`, each row the packed K and
/// V of one position, as the projections produce them (the fused kernel reads heads in place).
#[derive(Clone, Debug)]
pub struct KvCache {
    pub kv: Tensor,
}

impl KvCache {
    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            kv: self.kv.index_select(indices, 0)?,
        })
    }

    /// Rows `start .. start + len` of the batch, as a view.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            kv: self.kv.narrow(0, start, len)?,
        })
    }
}

/// Rows a decoding cache's buffer holds at first and grows by: most sentences end within
/// them, so the buffer is seldom copied.
const STEP_CACHE_BLOCK: usize = 32;

/// Self-attention keys and values of the positions decoded so far, `(b, t, 2·d)` as in
/// [`KvCache`], written into a buffer `(b, capacity, 2·d)` that grows by [`STEP_CACHE_BLOCK`]
/// rows: a step writes one row per sentence, where concatenating copied the whole cache every
/// step (5–7% of a greedy step, perf), and the attention kernel reads the rows in place.
/// Written by hand rather than with candle-nn's `kv_cache::Cache` because beam search reorders
/// the cache every step, and that type can only be rebuilt by copying the rows twice.
/// Not `Clone`: the buffer is written in place, so a copy would share it.
#[derive(Debug, Default)]
pub struct StepKvCache {
    buf: Option<Tensor>,
    len: usize,
}

impl StepKvCache {
    /// The cached rows, `(b, t, 2·d)`: a view into the buffer.
    pub fn kv(&self) -> Result<Option<Tensor>> {
        self.buf
            .as_ref()
            .map(|b| b.narrow(1, 0, self.len))
            .transpose()
    }

    /// Writes the rows of new positions, `(b, n, 2·d)`, after the cached ones.
    fn append(&mut self, rows: &Tensor) -> Result<()> {
        let n = rows.dim(1)?;
        let buf = match self.buf.take() {
            None => {
                let (b, _, w) = rows.dims3()?;
                let cap = n.div_ceil(STEP_CACHE_BLOCK).max(1) * STEP_CACHE_BLOCK;
                Tensor::zeros((b, cap, w), rows.dtype(), rows.device())?
            }
            Some(buf) if self.len + n > buf.dim(1)? => {
                let (b, cap, w) = buf.dims3()?;
                let extra = (self.len + n - cap).div_ceil(STEP_CACHE_BLOCK) * STEP_CACHE_BLOCK;
                let more = Tensor::zeros((b, extra, w), buf.dtype(), buf.device())?;
                Tensor::cat(&[&buf, &more], 1)?
            }
            Some(buf) => buf,
        };
        buf.slice_set(rows, 1, self.len)?;
        self.buf = Some(buf);
        self.len += n;
        Ok(())
    }

    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences: one copy of the positions held, into a buffer with the
    /// same room.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            buf: (self.buf.as_ref())
                .map(|b| index_select_prefix(b, indices, self.len))
                .transpose()?,
            len: self.len,
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
            let dropout = train.then_some(&self.dropout);
            let out = self_attention(&qkv, bias, self.n_heads, dropout)?;
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
        let out = cross_attention(&qkv, &kv, &no_mask, self.n_heads, None)?;
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
            let dropout = train.then_some(&self.dropout);
            let out = cross_attention(&q, &memory_kv.kv, bias, self.n_heads, dropout)?;
            return Ok((self.out_proj.forward(&out)?, None));
        }
        let (out, probs) = attention_with_probs(&q, &memory_kv.kv, bias, self.n_heads, |p| {
            self.dropout.forward_t(p, train)
        })?;
        Ok((self.out_proj.forward(&out)?, Some(probs)))
    }
}
