//! From configured splits to tokenised examples.

use anyhow::{Context, Result};
use wick_data::{BadLine, CorpusSpec, Example, Pair, SubwordTokenizer};

use crate::config::Config;
use crate::run::Tokenizers;

/// A split of a run's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| format!("unknown split `{s}` (expected train, dev or test)"))
    }
}

/// The corpus of a split, unless the data is synthetic.
pub fn split_spec(cfg: &Config, split: Split) -> Result<Option<&CorpusSpec>> {
    if cfg.data.synthetic.is_some() {
        return Ok(None);
    }
    let spec = match split {
        Split::Train => &cfg.data.train,
        Split::Dev => &cfg.data.dev,
        Split::Test => &cfg.data.test,
    };
    spec.as_ref()
        .map(Some)
        .with_context(|| format!("the config has no data.{} split", split.name()))
}

/// Reads (or, for synthetic tasks, regenerates) one split under `data.on_bad_line`; dropped
/// lines are reported on stderr and returned.
pub fn load_split_reporting(cfg: &Config, split: Split) -> Result<(Vec<Pair>, Vec<BadLine>)> {
    let Some(spec) = split_spec(cfg, split)? else {
        let Some(synthetic) = &cfg.data.synthetic else {
            unreachable!("split_spec returns None only for synthetic data")
        };
        let splits = synthetic.generate(cfg.train.seed)?;
        let pairs = match split {
            Split::Train => splits.train,
            Split::Dev => splits.dev,
            Split::Test => splits.test,
        };
        return Ok((pairs, Vec::new()));
    };
    let scan = spec.read_with(cfg.data.on_bad_line)?;
    if !scan.bad.is_empty() {
        eprintln!(
            "data.{}: dropped {} of {} lines of {} (data.on_bad_line = \"skip\"): {}",
            split.name(),
            scan.bad.len(),
            scan.lines,
            spec.describe(),
            scan.summary()
        );
    }
    Ok((scan.pairs, scan.bad))
}

/// Reads (or, for synthetic tasks, regenerates) one split; see [`load_split_reporting`].
pub fn load_split(cfg: &Config, split: Split) -> Result<Vec<Pair>> {
    Ok(load_split_reporting(cfg, split)?.0)
}

/// Bytes per subword token above which a sentence cannot fit `max_len` tokens with any
/// sensible BPE vocabulary; used to drop huge lines before they reach the tokenizer.
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// Whether a side certainly has more than `max_len` subword tokens: more words than that
/// (every word is at least one token) or more than `MAX_BYTES_PER_TOKEN` bytes per token.
pub fn certainly_too_long(text: &str, max_len: usize) -> bool {
    text.len() > max_len * MAX_BYTES_PER_TOKEN || text.split_whitespace().nth(max_len).is_some()
}

/// Drops pairs that certainly exceed `max_len` tokens on a side, before tokenizer training
/// (so a 10 MB line costs a scan, not a BPE pass). Returns the kept pairs and the count.
pub fn drop_overlong(pairs: Vec<Pair>, max_len: usize) -> (Vec<Pair>, usize) {
    let before = pairs.len();
    let kept: Vec<Pair> = pairs
        .into_iter()
        .filter(|p| !certainly_too_long(&p.src, max_len) && !certainly_too_long(&p.tgt, max_len))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// Trains the tokenizer(s) on the training pairs only, or loads `data.tokenizer`.
pub fn train_tokenizers(cfg: &Config, train: &[Pair]) -> Result<Tokenizers> {
    let d = &cfg.data;
    if let Some(path) = &d.tokenizer {
        let t = SubwordTokenizer::load(&wick_data::hub::resolve(path)?)?;
        return Ok(Tokenizers {
            src: t.clone(),
            tgt: t,
            joint: true,
        });
    }
    if d.joint_vocab {
        let texts = train.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
        let t = SubwordTokenizer::train(texts, d.vocab_size, d.min_frequency)?;
        Ok(Tokenizers {
            src: t.clone(),
            tgt: t,
            joint: true,
        })
    } else {
        let src = SubwordTokenizer::train(
            train.iter().map(|p| p.src.as_str()),
            d.vocab_size,
            d.min_frequency,
        )?;
        let tgt = SubwordTokenizer::train(
            train.iter().map(|p| p.tgt.as_str()),
            d.vocab_size,
            d.min_frequency,
        )?;
        Ok(Tokenizers {
            src,
            tgt,
            joint: false,
        })
    }
}

/// Tokenises pairs; with `max_len`, pairs longer than that on either side are dropped and
/// counted.
pub fn encode_pairs(
    tok: &Tokenizers,
    pairs: &[Pair],
    max_len: Option<usize>,
) -> Result<(Vec<Example>, usize)> {
    let srcs: Vec<&str> = pairs.iter().map(|p| p.src.as_str()).collect();
    let tgts: Vec<&str> = pairs.iter().map(|p| p.tgt.as_str()).collect();
    let src_ids = tok.src.encode_batch(&srcs)?;
    let tgt_ids = tok.tgt.encode_batch(&tgts)?;
    let mut out = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for (id, (src, tgt)) in src_ids.into_iter().zip(tgt_ids).enumerate() {
        if max_len.is_some_and(|m| src.len() > m || tgt.len() > m) {
            dropped += 1;
            continue;
        }
        out.push(Example { id, src, tgt });
    }
    Ok((out, dropped))
}
