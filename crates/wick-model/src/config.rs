//! Architecture hyper-parameters of the Transformer.

use candle_core::{Result, bail};
use serde::{Deserialize, Serialize};

/// Where layer normalisation sits relative to each residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPosition {
    /// `x = norm(x + f(x))`, as in Vaswani et al. (2017). Faster, and stable for small models.
    Post,
    /// `x = x + f(norm(x))` with a final norm after the stack; more stable for deep models.
    Pre,
}

/// Which embedding matrices share weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tying {
    /// Three separate matrices: source embedding, target embedding, output projection.
    None,
    /// Target embedding and output projection share one matrix (Press & Wolf, 2017).
    Decoder,
    /// Source embedding, target embedding and output projection are one matrix; needs a
    /// joint vocabulary.
    All,
}

/// Transformer architecture. Vocabulary sizes come from the tokenizer ([`VocabSizes`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Width of the residual stream. Default 256.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`. Default 4.
    pub n_heads: usize,
    /// Encoder layers. Default 3.
    pub encoder_layers: usize,
    /// Decoder layers. Default 3.
    pub decoder_layers: usize,
    /// Hidden width of the position-wise feed-forward block. Default 1024.
    pub d_ff: usize,
    /// Dropout on embeddings and on every residual branch. Default 0.1.
    pub dropout: f32,
    /// Dropout on attention probabilities. Default 0.0.
    pub attention_dropout: f32,
    /// Dropout after the feed-forward activation. Default 0.0.
    pub activation_dropout: f32,
    /// `post` (default) or `pre` layer normalisation.
    pub norm: NormPosition,
    /// `none`, `decoder` (default) or `all`.
    pub tie_embeddings: Tying,
    /// Longest sequence the sinusoidal table covers. Default 256.
    pub max_positions: usize,
    /// Epsilon of every layer norm. Default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            d_model: 256,
            n_heads: 4,
            encoder_layers: 3,
            decoder_layers: 3,
            d_ff: 1024,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            norm: NormPosition::Post,
            tie_embeddings: Tying::Decoder,
            max_positions: 256,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Vocabulary sizes and the padding id, fixed by the tokenizer(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabSizes {
    pub src: usize,
    pub tgt: usize,
}

impl TransformerConfig {
    /// Checks the architecture on its own; the trainer's config validation reports the same
    /// problems with the TOML key names.
    pub fn validate(&self, vocab: VocabSizes) -> Result<()> {
        if self.d_model == 0 || self.n_heads == 0 || self.d_ff == 0 {
            bail!("d_model, n_heads and d_ff must be positive")
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            bail!(
                "d_model ({}) must be divisible by n_heads ({})",
                self.d_model,
                self.n_heads
            )
        }
        if !self.d_model.is_multiple_of(2) {
            bail!(
                "d_model ({}) must be even for sinusoidal positions",
                self.d_model
            )
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), got {p}")
            }
        }
        if self.tie_embeddings == Tying::All && vocab.src != vocab.tgt {
            bail!(
                "tie_embeddings = \"all\" needs one joint vocabulary, got source {} and target {}",
                vocab.src,
                vocab.tgt
            )
        }
        if vocab.src == 0 || vocab.tgt == 0 {
            bail!("empty vocabulary")
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}
