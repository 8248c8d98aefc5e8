//! From configured splits to tokenised examples.

use anyhow::{Context, Result};
use wick_data::{Example, Pair, SubwordTokenizer};

use crate::config::Config;
use crate::run::Tokenizers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// Reads (or, for synthetic tasks, regenerates) one split.
pub fn load_split(cfg: &Config, split: Split) -> Result<Vec<Pair>> {
    if let Some(spec) = &cfg.data.synthetic {
        let splits = spec.generate(cfg.train.seed)?;
        return Ok(match split {
            Split::Train => splits.train,
            Split::Dev => splits.dev,
            Split::Test => splits.test,
        });
    }
    let spec = match split {
        Split::Train => &cfg.data.train,
        Split::Dev => &cfg.data.dev,
        Split::Test => &cfg.data.test,
    };
    let spec = spec
        .as_ref()
        .with_context(|| format!("the config has no data.{} split", split.name()))?;
    Ok(spec.read()?)
}

/// Trains the tokenizer(s) on the training pairs only.
pub fn train_tokenizers(cfg: &Config, train: &[Pair]) -> Result<Tokenizers> {
    let d = &cfg.data;
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
