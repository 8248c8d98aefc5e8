//! Corpus BLEU (Papineni et al., 2002) and chrF (Popović, 2015) computed exactly as
//! sacreBLEU 2.x computes them (Post, 2018), with its signatures, so wick's numbers can be
//! compared with papers and with `sacrebleu` output. Re-implemented rather than wrapped
//! because no Rust crate reproduces sacreBLEU; `tests/sacrebleu.rs` checks it against
//! fixtures produced by sacreBLEU itself (`scripts/reference/sacrebleu_fixtures.py`).
//!
//! No Candle and no model: the crate scores text files, and is usable on its own.
//!
//! ```
//! use wick_metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};
//!
//! let hyps = vec!["the cat sat on the mat".to_string(), "a dog barked".to_string()];
//! let refs = vec![vec!["the cat sat on the mat".to_string(), "the dog barked".to_string()]];
//! // sacreBLEU 2.6.0 on the same text: BLEU = 88.36, chrF2 = 88.75.
//! let bleu = corpus_bleu(&hyps, &refs, BleuOptions::default());
//! assert_eq!(format!("{:.2}", bleu.score), "88.36");
//! assert!(bleu.signature.starts_with("BLEU|nrefs:1|case:mixed|eff:no|tok:13a"));
//! let chrf = corpus_chrf(&hyps, &refs, ChrfOptions::default());
//! assert_eq!(format!("{:.2}", chrf.score), "88.75");
//! ```

mod bleu;
mod bootstrap;
mod chrf;
mod tokenize;

pub use bleu::{
    BleuOptions, BleuScore, BleuStats, bleu_from_stats, bleu_segment, bleu_segments, corpus_bleu,
};
pub use bootstrap::{ConfidenceInterval, bleu_chrf_intervals, bootstrap};
pub use chrf::{ChrfOptions, ChrfScore, ChrfStats, chrf_segments, chrf_signature, corpus_chrf};
pub use tokenize::{BleuTokenizer, SACREBLEU_VERSION, tokenize};
