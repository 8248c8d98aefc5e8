//! `wick-model`: attention-based sequence-to-sequence models on Candle.
//!
//! ```text
//! registry ── ModelConfig ([model] arch = "…" + keys) ──build──▶ Model (any architecture)
//!                                                                  │ the Seq2Seq contract
//! transformer/ (arch = "transformer") ── implements Seq2Seq ───────┤
//!     uses attention/ (multi-head, caches) and layers/             │
//! rnn/ (arch = "rnn": GRU/LSTM, Bahdanau/Luong) ── Seq2Seq ─────────┤
//! conv/ (arch = "conv": ConvS2S) ── Seq2Seq ────────────────────────┤
//!                                                                  ▼
//!                         search (greedy, beam), loss (label-smoothed CE)
//! every op ─▶ ops (the one kernel-or-reference decision) ─▶ wick_kernels | Candle ops
//! ```
//!
//! One building block per file; every layer is a struct of tensors built by `new(…, vb)`, and
//! `vb.pp(..)` paths make the module tree the checkpoint key tree
//! (`encoder.layers.0.self_attn.qkv_proj.weight`).
//!
//! Architectures implement [`Seq2Seq`], which is all that search ([`search`]), the loss and
//! the trainer need; [`Model`] holds any of them behind one type, built by name from a
//! [`ModelConfig`] ([`registry`]).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use wick_model::search::{SpecialIds, greedy};
//! use wick_model::{DataShape, DropoutRng, ModelConfig, ParamStore, Seq2Seq, VocabSizes};
//!
//! // A small Transformer (every key not given takes its default).
//! let cfg = ModelConfig::parse("arch = \"transformer\"\nd_model = 32\nd_ff = 64")?;
//! cfg.validate(&DataShape::default())?;
//! let store = ParamStore::new(1);
//! let vocab = VocabSizes { src: 40, tgt: 40 };
//! let vb = store.var_builder(DType::F32, &Device::Cpu);
//! let model = cfg.build(vocab, DropoutRng::new(2), vb)?.for_decoding()?;
//!
//! // Encode two sentences (ids 4.., then `</s>` = 2, padding 0) and decode greedily.
//! let src = Tensor::new(&[[5u32, 9, 2], [7, 2, 0]], &Device::Cpu)?;
//! let src_mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &Device::Cpu)?;
//! let memory = model.encode(&src, &src_mask, false)?;
//! let out = greedy(&model, &memory, SpecialIds { bos: 1, eos: 2 }, &[5, 5])?;
//! assert_eq!(out.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod attention;
pub mod conv;
pub mod init;
pub mod layers;
pub mod loss;
pub mod mask;
pub mod model;
pub mod ops;
pub mod registry;
pub mod rnn;
pub mod search;
pub mod transformer;

pub use init::ParamStore;
pub use layers::DropoutRng;
pub use model::{
    DecodingState, Memory, Model, OutputLayer, ProductShape, Seq2Seq, StepCost, VocabSizes,
};
pub use registry::{
    ArchConfig, Architecture, DataShape, KeyError, ModelConfig, architectures, register,
};

/// Re-exported so that downstream crates use the same Candle as the model.
pub use candle_core as candle;
