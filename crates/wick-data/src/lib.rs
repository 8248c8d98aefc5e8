//! `wick-data`: parallel corpora, subword tokenizers and batching.
//!
//! - [`corpus`] reads `src<TAB>tgt` files or aligned file pairs, plain or gzip, and names the
//!   file and line of anything wrong.
//! - [`tokenizer`] trains and loads BPE tokenizers (`tokenizer.json`) whose decoding restores
//!   the original text exactly.
//! - [`batch`] turns examples into padded tensors with the teacher-forcing shift and masks,
//!   computed once; [`batcher`] groups examples under a token budget.
//! - [`hub`] resolves `hf://` paths through the Hugging Face Hub cache.
//! - [`synthetic`] generates the `reverse` and `copy` sanity tasks.

pub mod batch;
pub mod batcher;
pub mod corpus;
pub mod error;
pub mod hub;
pub mod synthetic;
pub mod tokenizer;

pub use batch::{Batch, Example, SourceBatch};
pub use corpus::{BadLine, CorpusSpec, OnBadLine, Pair, Scan};
pub use error::DataError;
pub use tokenizer::{SpecialTokens, SubwordTokenizer};
