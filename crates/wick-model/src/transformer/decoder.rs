//! Transformer decoder: causal self-attention, cross-attention to the encoder memory and
//! feed-forward, with an incremental mode that keeps a key/value cache per layer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{NormPosition, TransformerConfig};
use super::encoder::{maybe_norm, residual, stack_final_norm};
use crate::attention::{CrossAttention, KvCache, SelfAttention, StepKvCache};
use crate::layers::{
    Dropout, DropoutRng, FeedForward, LayerNorm, SinusoidalPositions, TokenEmbedding,
};
use crate::mask::causal_bias;

/// Per-layer decoding state: the self-attention keys/values of the positions decoded so far
/// and the cross-attention keys/values of the memory (computed once).
#[derive(Debug)]
pub struct LayerCache {
    pub self_kv: StepKvCache,
    pub memory_kv: KvCache,
}

impl LayerCache {
    /// Keeps rows `rows` of the self-attention state, in place (through `spare`, which the
    /// layers share: `StepKvCache::select_in_place`), and rows `sources` of the memory's
    /// keys/values (`None`: as they are); see `Seq2Seq::move_cache`.
    pub fn select_in_place(
        &mut self,
        rows: &Tensor,
        sources: Option<&Tensor>,
        spare: &mut Option<Tensor>,
    ) -> Result<()> {
        self.self_kv.select_in_place(rows, spare)?;
        if let Some(sources) = sources {
            self.memory_kv = self.memory_kv.index_select(sources)?;
        }
        Ok(())
    }

    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            self_kv: self.self_kv.index_select(indices)?,
            memory_kv: self.memory_kv.index_select(indices)?,
        })
    }

    /// Rows `start .. start + len` (u32 `rows`): the memory's keys/values as a view, the
    /// self-attention state copied (it is written in place).
    pub fn narrow(&self, start: usize, len: usize, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            self_kv: self.self_kv.index_select(rows)?,
            memory_kv: self.memory_kv.narrow(start, len)?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    self_attn: SelfAttention,
    self_attn_norm: LayerNorm,
    cross_attn: CrossAttention,
    cross_attn_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
    dropout: Dropout,
    norm: NormPosition,
}

impl DecoderLayer {
    pub fn new(cfg: &TransformerConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let (d, h, eps) = (cfg.d_model, cfg.n_heads, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: SelfAttention::new(
                d,
                h,
                cfg.attention_dropout,
                rng.clone(),
                vb.pp("self_attn"),
            )?,
            self_attn_norm: LayerNorm::new(d, eps, vb.pp("self_attn_norm"))?,
            cross_attn: CrossAttention::new(
                d,
                h,
                cfg.attention_dropout,
                rng.clone(),
                vb.pp("cross_attn"),
            )?,
            cross_attn_norm: LayerNorm::new(d, eps, vb.pp("cross_attn_norm"))?,
            ffn: FeedForward::new(
                d,
                cfg.d_ff,
                cfg.activation_dropout,
                rng.clone(),
                vb.pp("ffn"),
            )?,
            ffn_norm: LayerNorm::new(d, eps, vb.pp("ffn_norm"))?,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
            norm: cfg.norm,
        })
    }

    pub fn memory_kv(&self, memory: &Tensor) -> Result<KvCache> {
        self.cross_attn.memory_kv(memory)
    }

    /// Full-sequence (teacher-forced) forward.
    ///
    /// # Shapes
    /// xs `(b, t, d)`, causal `(1, 1, t, t)`, memory K/V `(b, s, 2·d)`, src_bias
    /// `(b, 1, 1, s)` → `(b, t, d)` and, if `want_probs`, the cross-attention probabilities
    /// `(b, h, t, s)`.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        causal: &Tensor,
        memory_kv: &KvCache,
        src_bias: &Tensor,
        want_probs: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let xs = residual(
            xs,
            &self.self_attn_norm,
            self.norm,
            &self.dropout,
            train,
            |x| Ok(self.self_attn.forward(x, causal, train, false)?.0),
        )?;
        let mut probs = None;
        let xs = residual(
            &xs,
            &self.cross_attn_norm,
            self.norm,
            &self.dropout,
            train,
            |x| {
                let (out, p) = self
                    .cross_attn
                    .forward(x, memory_kv, src_bias, train, want_probs)?;
                probs = p;
                Ok(out)
            },
        )?;
        let xs = residual(&xs, &self.ffn_norm, self.norm, &self.dropout, train, |x| {
            self.ffn.forward_t(x, train)
        })?;
        Ok((xs, probs))
    }

    /// A copy whose projections are laid out for decoding (`Linear::for_decoding`): built
    /// once per model (`Transformer::for_decoding`) or per decoding call, used by every step.
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.for_decoding()?,
            cross_attn: self.cross_attn.for_decoding()?,
            ffn: self.ffn.for_decoding()?,
            ..self.clone()
        })
    }

    /// One incremental step (inference only). The memory may hold one row per `g` rows of `xs`
    /// (the hypotheses of a sentence in beam search), see `CrossAttention::forward_step`.
    ///
    /// # Shapes
    /// xs `(b, 1, d)`, memory keys/values `(b / g, s, 2·d)`, src_bias `(b / g, 1, 1, s)` →
    /// `(b, 1, d)`; `cache.self_kv` grows by one position.
    pub fn forward_step(
        &self,
        xs: &Tensor,
        cache: &mut LayerCache,
        src_bias: &Tensor,
    ) -> Result<Tensor> {
        let xs = residual(
            xs,
            &self.self_attn_norm,
            self.norm,
            &self.dropout,
            false,
            |x| self.self_attn.forward_step(x, &mut cache.self_kv),
        )?;
        let xs = residual(
            &xs,
            &self.cross_attn_norm,
            self.norm,
            &self.dropout,
            false,
            |x| self.cross_attn.forward_step(x, &cache.memory_kv, src_bias),
        )?;
        residual(&xs, &self.ffn_norm, self.norm, &self.dropout, false, |x| {
            self.ffn.forward_t(x, false)
        })
    }
}

/// Output of the full decoder forward.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// `(b, t, d)`, before the output projection.
    pub hidden: Tensor,
    /// Per layer, `(b, h, t, s)`; empty unless asked for.
    pub cross_attention: Vec<Tensor>,
}

#[derive(Clone, Debug)]
pub struct Decoder {
    layers: Vec<DecoderLayer>,
    final_norm: Option<LayerNorm>,
    dropout: Dropout,
}

impl Decoder {
    pub fn new(cfg: &TransformerConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, rng, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        let final_norm = stack_final_norm(cfg, vb.clone())?;
        Ok(Self {
            layers,
            final_norm,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
        })
    }

    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// A copy laid out for decoding (`DecoderLayer::for_decoding`).
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(DecoderLayer::for_decoding)
                .collect::<Result<_>>()?,
            ..self.clone()
        })
    }

    /// Teacher-forced forward over a whole target prefix.
    ///
    /// # Shapes
    /// tgt_in `(b, t)` u32, memory `(b, s, d)`, src_bias `(b, 1, 1, s)` → hidden `(b, t, d)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_t(
        &self,
        embed: &TokenEmbedding,
        positions: &SinusoidalPositions,
        tgt_in: &Tensor,
        memory: &Tensor,
        src_bias: &Tensor,
        want_attention: bool,
        train: bool,
    ) -> Result<DecoderOutput> {
        let (_, t) = tgt_in.dims2()?;
        let causal = causal_bias(t, tgt_in.device())?;
        let xs = embed.forward_at(tgt_in, positions, 0)?; // (b, t, d)
        let mut xs = self.dropout.forward_t(&xs, train)?;
        let mut cross_attention = Vec::new();
        for layer in &self.layers {
            let memory_kv = layer.memory_kv(memory)?;
            let (out, probs) =
                layer.forward_t(&xs, &causal, &memory_kv, src_bias, want_attention, train)?;
            xs = out;
            cross_attention.extend(probs);
        }
        Ok(DecoderOutput {
            hidden: maybe_norm(self.final_norm.as_ref(), xs)?,
            cross_attention,
        })
    }

    /// One incremental step for the tokens at position `offset`.
    ///
    /// # Shapes
    /// tokens `(b, 1)` u32 → hidden `(b, 1, d)`.
    pub fn forward_step(
        &self,
        embed: &TokenEmbedding,
        positions: &SinusoidalPositions,
        tokens: &Tensor,
        offset: usize,
        caches: &mut [LayerCache],
        src_bias: &Tensor,
    ) -> Result<Tensor> {
        let mut xs = embed.forward_at(tokens, positions, offset)?; // (b, 1, d)
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            xs = layer.forward_step(&xs, cache, src_bias)?;
        }
        maybe_norm(self.final_norm.as_ref(), xs)
    }
}
