//! Transformer encoder: embeddings + positions, then `encoder_layers` layers of
//! self-attention and feed-forward.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{NormPosition, TransformerConfig};
use crate::attention::SelfAttention;
use crate::layers::{
    Dropout, DropoutRng, FeedForward, LayerNorm, SinusoidalPositions, TokenEmbedding,
};

/// A residual block around `f`, with the norm before (`pre`) or after (`post`) the sum.
pub(super) fn residual(
    xs: &Tensor,
    norm: &LayerNorm,
    position: NormPosition,
    dropout: &Dropout,
    train: bool,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match position {
        NormPosition::Pre => dropout.add_to(xs, &f(&norm.forward(xs)?)?, train),
        NormPosition::Post => norm.forward(&dropout.add_to(xs, &f(xs)?, train)?),
    }
}

#[derive(Clone, Debug)]
pub struct EncoderLayer {
    self_attn: SelfAttention,
    self_attn_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
    dropout: Dropout,
    norm: NormPosition,
}

impl EncoderLayer {
    /// A copy with its projections laid out for decoding (`Linear::for_decoding`).
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.for_decoding()?,
            ffn: self.ffn.for_decoding()?,
            ..self.clone()
        })
    }

    pub fn new(cfg: &TransformerConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            self_attn: SelfAttention::new(
                d,
                cfg.n_heads,
                cfg.attention_dropout,
                rng.clone(),
                vb.pp("self_attn"),
            )?,
            self_attn_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("self_attn_norm"))?,
            ffn: FeedForward::new(
                d,
                cfg.d_ff,
                cfg.activation_dropout,
                rng.clone(),
                vb.pp("ffn"),
            )?,
            ffn_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("ffn_norm"))?,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
            norm: cfg.norm,
        })
    }

    /// # Shapes
    /// xs `(b, s, d)`, src_bias `(b, 1, 1, s)` → `(b, s, d)`
    pub fn forward_t(&self, xs: &Tensor, src_bias: &Tensor, train: bool) -> Result<Tensor> {
        let xs = residual(
            xs,
            &self.self_attn_norm,
            self.norm,
            &self.dropout,
            train,
            |x| Ok(self.self_attn.forward(x, src_bias, train, false)?.0),
        )?;
        residual(&xs, &self.ffn_norm, self.norm, &self.dropout, train, |x| {
            self.ffn.forward_t(x, train)
        })
    }
}

#[derive(Clone, Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
    /// Only with pre-norm, where the stack's output is otherwise unnormalised.
    final_norm: Option<LayerNorm>,
    dropout: Dropout,
}

impl Encoder {
    /// A copy with every layer's projections laid out for decoding.
    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            layers: (self.layers.iter())
                .map(EncoderLayer::for_decoding)
                .collect::<Result<_>>()?,
            ..self.clone()
        })
    }

    pub fn new(cfg: &TransformerConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(cfg, rng, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        let final_norm = stack_final_norm(cfg, vb.clone())?;
        Ok(Self {
            layers,
            final_norm,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
        })
    }

    /// # Shapes
    /// src `(b, s)` u32, src_bias `(b, 1, 1, s)` → memory `(b, s, d)`
    pub fn forward_t(
        &self,
        embed: &TokenEmbedding,
        positions: &SinusoidalPositions,
        src: &Tensor,
        src_bias: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let xs = embed.forward_at(src, positions, 0)?; // (b, s, d)
        let mut xs = self.dropout.forward_t(&xs, train)?;
        for layer in &self.layers {
            xs = layer.forward_t(&xs, src_bias, train)?;
        }
        maybe_norm(self.final_norm.as_ref(), xs)
    }
}

/// The norm after a pre-norm stack, whose output is otherwise unnormalised; post-norm stacks
/// end in a norm already and get none.
pub(super) fn stack_final_norm(
    cfg: &TransformerConfig,
    vb: VarBuilder,
) -> Result<Option<LayerNorm>> {
    match cfg.norm {
        NormPosition::Pre => Ok(Some(LayerNorm::new(
            cfg.d_model,
            cfg.layer_norm_eps,
            vb.pp("final_norm"),
        )?)),
        NormPosition::Post => Ok(None),
    }
}

/// Applies `norm` if there is one.
pub(super) fn maybe_norm(norm: Option<&LayerNorm>, xs: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&xs),
        None => Ok(xs),
    }
}
