//! The RNN encoder-decoder's `[model]` keys (`arch = "rnn"`).

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::Rnn;
use crate::layers::DropoutRng;
use crate::model::VocabSizes;
use crate::registry::{ArchConfig, DataShape, KeyError};
use crate::transformer::Tying;

/// The recurrent cell of the encoder and the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// Gated recurrent unit (Cho et al., 2014), PyTorch's gate layout `r, z, n`.
    Gru,
    /// Long short-term memory (Hochreiter & Schmidhuber, 1997), gate layout `i, f, g, o`.
    Lstm,
}

impl Cell {
    /// Gate blocks in the stacked weights: 3 for a GRU, 4 for an LSTM.
    pub fn gates(self) -> usize {
        match self {
            Self::Gru => 3,
            Self::Lstm => 4,
        }
    }
}

/// How the decoder scores source positions, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Additive, `vᵀ tanh(W_q s + W_k h)` with the previous decoder state as the query,
    /// before the recurrent step, whose input is `[embedding; context]` (Bahdanau, Cho &
    /// Bengio, 2015).
    Bahdanau,
    /// `hᵀ h̄`, with the new decoder state as the query, after the recurrent step (Luong,
    /// Pham & Manning, 2015); so are the two below.
    LuongDot,
    /// `hᵀ W h̄`.
    LuongGeneral,
    /// `vᵀ tanh(W [h; h̄])`.
    LuongConcat,
}

impl AttentionKind {
    /// Luong's order: step first, then attend with the new state.
    pub fn is_luong(self) -> bool {
        !matches!(self, Self::Bahdanau)
    }

    /// Scores through `vᵀ tanh(·)` with an attention width (Bahdanau, Luong's concat).
    pub fn is_additive(self) -> bool {
        matches!(self, Self::Bahdanau | Self::LuongConcat)
    }
}

/// An attention-based RNN encoder-decoder. Vocabulary sizes come from the tokenizers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RnnConfig {
    /// `gru` (default) or `lstm`, for the encoder and the decoder.
    pub cell: Cell,
    /// `bahdanau` (default), `luong_dot`, `luong_general` or `luong_concat`.
    pub attention: AttentionKind,
    /// Width of the token embeddings (not scaled) and of the attentional vector that goes
    /// to the output layer. Default 128.
    pub embedding_dim: usize,
    /// The decoder's state; the encoder's two directions have half each, so that encoder
    /// outputs have this width too. Must be even. Default 256.
    pub hidden_size: usize,
    /// Stacked bidirectional encoder layers. Default 1.
    pub encoder_layers: usize,
    /// Stacked decoder layers; attention reads the top one. Default 1.
    pub decoder_layers: usize,
    /// Luong: feed the previous attentional vector into the next step's input. Bahdanau's
    /// decoder always reads its context, so it ignores the key. Default true.
    pub input_feeding: bool,
    /// Bahdanau only: a conditional decoder (Nematus' `gru_cond`, Sennrich et al., 2017): a
    /// first recurrent step over the previous word gives the attention its query, and the
    /// first decoder layer goes on from that state with the context as its input, so the
    /// query has seen the word it predicts from. Default false.
    pub conditional: bool,
    /// Start the decoder from `tanh(W [→h_last; ←h_first])` of the top encoder layer
    /// (for an LSTM, its cell from the cells the same way); `false`: from zeros. Default true.
    pub bridge: bool,
    /// Dropout on embeddings, between stacked layers and before the output layer.
    /// Default 0.2.
    pub dropout: f32,
    /// Dropout on the encoder states `h̄` that attention reads, keys and values alike
    /// (nmtpytorch's `dropout_ctx`); the bridge reads the final states before it. Default 0.
    pub context_dropout: f32,
    /// `none`, `decoder` (default: the output layer is the target embedding) or `all`.
    pub tie_embeddings: Tying,
}

impl Default for RnnConfig {
    fn default() -> Self {
        Self {
            cell: Cell::Gru,
            attention: AttentionKind::Bahdanau,
            embedding_dim: 128,
            hidden_size: 256,
            encoder_layers: 1,
            decoder_layers: 1,
            input_feeding: true,
            conditional: false,
            bridge: true,
            dropout: 0.2,
            context_dropout: 0.0,
            tie_embeddings: Tying::Decoder,
        }
    }
}

impl RnnConfig {
    /// Each encoder direction's state width.
    pub fn encoder_hidden(&self) -> usize {
        self.hidden_size / 2
    }

    /// Whether the decoder's first layer reads the previous attentional vector.
    pub fn feeds_input(&self) -> bool {
        self.attention.is_luong() && self.input_feeding
    }

    /// Width of the decoder's first-layer input.
    pub fn decoder_input(&self) -> usize {
        match self.attention {
            AttentionKind::Bahdanau if self.conditional => self.hidden_size,
            AttentionKind::Bahdanau => self.embedding_dim + self.hidden_size,
            _ if self.input_feeding => 2 * self.embedding_dim,
            _ => self.embedding_dim,
        }
    }
}

impl ArchConfig for RnnConfig {
    const NAME: &'static str = "rnn";
    const ABOUT: &'static str = "bidirectional GRU/LSTM encoder, GRU/LSTM decoder with additive (Bahdanau) or multiplicative (Luong) attention";
    type Model = Rnn;

    fn validate(&self, data: &DataShape) -> Result<(), KeyError> {
        if self.embedding_dim == 0 {
            return Err(KeyError::new("embedding_dim", "must be positive"));
        }
        if self.hidden_size < 2 || !self.hidden_size.is_multiple_of(2) {
            return Err(KeyError::new(
                "hidden_size",
                format!(
                    "must be even and at least 2 (the encoder's two directions get half each), got {}",
                    self.hidden_size
                ),
            ));
        }
        if self.encoder_layers == 0 {
            return Err(KeyError::new("encoder_layers", "must be at least 1"));
        }
        if self.decoder_layers == 0 {
            return Err(KeyError::new("decoder_layers", "must be at least 1"));
        }
        if self.conditional && self.attention.is_luong() {
            return Err(KeyError::new(
                "conditional",
                "a conditional decoder attends between two recurrent steps, as Bahdanau's does: it needs attention = \"bahdanau\"",
            ));
        }
        for (key, p) in [
            ("dropout", self.dropout),
            ("context_dropout", self.context_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(KeyError::new(key, format!("must be in [0, 1), got {p}")));
            }
        }
        self.tie_embeddings.check(data)?;
        data.check_vocab()
    }

    fn build(
        &self,
        vocab: VocabSizes,
        dropout: DropoutRng,
        vb: VarBuilder,
    ) -> candle_core::Result<Rnn> {
        Rnn::new(self, vocab, dropout, vb)
    }
}
