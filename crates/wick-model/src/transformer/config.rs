//! The Transformer's `[model]` keys (`arch = "transformer"`).

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::Transformer;
use crate::layers::DropoutRng;
use crate::model::{StepCost, VocabSizes};
use crate::registry::{ArchConfig, DataShape, KeyError};

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

impl Tying {
    /// `all` needs one joint vocabulary (`model.tie_embeddings` names the problem).
    pub fn check(self, data: &DataShape) -> Result<(), KeyError> {
        if self != Tying::All {
            return Ok(());
        }
        if !data.joint_vocab {
            return Err(KeyError::new(
                "tie_embeddings",
                "\"all\" needs data.joint_vocab = true",
            ));
        }
        match data.vocab {
            Some(v) if v.src != v.tgt => Err(KeyError::new(
                "tie_embeddings",
                format!(
                    "\"all\" needs one joint vocabulary, got source {} and target {}",
                    v.src, v.tgt
                ),
            )),
            _ => Ok(()),
        }
    }
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

impl TransformerConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

impl ArchConfig for TransformerConfig {
    const NAME: &'static str = "transformer";
    const ABOUT: &'static str = "Transformer encoder-decoder, multi-head scaled dot-product attention (Vaswani et al., 2017)";
    type Model = Transformer;

    fn validate(&self, data: &DataShape) -> Result<(), KeyError> {
        fn err(key: &str, message: impl Into<String>) -> KeyError {
            KeyError::new(key, message)
        }
        if self.d_model == 0 || self.n_heads == 0 {
            return Err(err("d_model", "d_model and n_heads must be positive"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(err(
                "d_model",
                format!(
                    "{} must be divisible by model.n_heads = {}",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if !self.d_model.is_multiple_of(2) {
            return Err(err(
                "d_model",
                format!("must be even (sinusoidal positions), got {}", self.d_model),
            ));
        }
        if self.d_ff == 0 || self.encoder_layers == 0 || self.decoder_layers == 0 {
            return Err(err(
                "d_ff",
                "d_ff, encoder_layers and decoder_layers must be positive",
            ));
        }
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(err(key, format!("must be in [0, 1), got {p}")));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(err(
                "layer_norm_eps",
                format!("must be a positive number, got {}", self.layer_norm_eps),
            ));
        }
        self.tie_embeddings.check(data)?;
        data.check_vocab()?;
        data.check_max_positions(self.max_positions)
    }

    fn build(
        &self,
        vocab: VocabSizes,
        dropout: DropoutRng,
        vb: VarBuilder,
    ) -> candle_core::Result<Transformer> {
        Transformer::new(self, vocab, dropout, vb)
    }

    fn step_cost(&self, vocab: VocabSizes, b: usize, s: usize, t: usize) -> Option<StepCost> {
        Some(super::cost::step_cost(self, vocab.tgt, b, s, t))
    }
}
