//! The convolutional encoder-decoder's `[model]` keys (`arch = "conv"`).

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::ConvS2S;
use crate::layers::DropoutRng;
use crate::model::VocabSizes;
use crate::registry::{ArchConfig, DataShape, KeyError};
use crate::transformer::Tying;

/// ConvS2S (Gehring et al., 2017). Vocabulary sizes come from the tokenizers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvConfig {
    /// Width of token and position embeddings, of the encoder outputs `z` that attention
    /// scores, and of the decoder's output before the vocabulary layer. Default 256.
    pub embedding_dim: usize,
    /// Channels of every convolution (the residual stream). Default 256.
    pub hidden_size: usize,
    /// Convolutional blocks of the encoder. Default 4.
    pub encoder_layers: usize,
    /// Convolutional blocks of the decoder, each with its own attention. Default 3.
    pub decoder_layers: usize,
    /// Width of every convolution; odd, so the encoder's is centred. Default 3.
    pub kernel_size: usize,
    /// Dropout on embeddings, on each block's input and before the output layer. Default 0.2.
    pub dropout: f32,
    /// Longest source, or target with `<s>`, the learned position tables cover. Default 256.
    pub max_positions: usize,
    /// `none`, `decoder` (default: the output layer is the target embedding) or `all`.
    pub tie_embeddings: Tying,
}

impl Default for ConvConfig {
    fn default() -> Self {
        Self {
            embedding_dim: 256,
            hidden_size: 256,
            encoder_layers: 4,
            decoder_layers: 3,
            kernel_size: 3,
            dropout: 0.2,
            max_positions: 256,
            tie_embeddings: Tying::Decoder,
        }
    }
}

impl ArchConfig for ConvConfig {
    const NAME: &'static str = "conv";
    const ABOUT: &'static str = "convolutional encoder-decoder with GLUs and an attention in every decoder layer (ConvS2S, Gehring et al., 2017)";
    type Model = ConvS2S;

    fn validate(&self, data: &DataShape) -> Result<(), KeyError> {
        for (key, v) in [
            ("embedding_dim", self.embedding_dim),
            ("hidden_size", self.hidden_size),
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
        ] {
            if v == 0 {
                return Err(KeyError::new(key, "must be positive"));
            }
        }
        if self.kernel_size == 0 || self.kernel_size.is_multiple_of(2) {
            return Err(KeyError::new(
                "kernel_size",
                format!(
                    "must be odd (the encoder's convolutions are centred), got {}",
                    self.kernel_size
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(KeyError::new(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
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
    ) -> candle_core::Result<ConvS2S> {
        ConvS2S::new(self, vocab, dropout, vb)
    }
}
