//! `wick-model`: attention-based sequence-to-sequence models on Candle.
//!
//! The crate depends on Candle only. One building block per file; every layer is a struct of
//! tensors built by `new(cfg, vb)`, and `vb.pp(..)` paths make the module tree the checkpoint
//! key tree (`encoder.layers.0.self_attn.qkv_proj.weight`).
//!
//! Models implement [`Seq2Seq`], which is all that search ([`search`]) and the trainer need,
//! so other encoder-decoders (RNN with additive or dot attention, convolutional encoders) can
//! sit beside the [`Transformer`] without touching either.

pub mod attention;
pub mod config;
pub mod decoder;
pub mod dropout;
pub mod embedding;
pub mod encoder;
pub mod feed_forward;
pub mod fused_attention;
pub mod init;
pub mod linear;
pub mod mask;
pub mod norm;
pub mod ops;
pub mod panel;
pub mod search;
pub mod seq2seq;
pub mod transformer;

pub use config::{NormPosition, TransformerConfig, Tying, VocabSizes};
pub use dropout::DropoutRng;
pub use init::ParamStore;
pub use seq2seq::{Memory, Seq2Seq};
pub use transformer::{Transformer, TransformerCache};

/// Re-exported so that downstream crates use the same Candle as the model.
pub use candle_core as candle;
