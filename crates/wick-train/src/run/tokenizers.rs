//! The tokenizer(s) of a run: `tokenizer.json`, or `tokenizer.src.json` and
//! `tokenizer.tgt.json`.

use std::path::Path;

use anyhow::Result;
use wick_data::SubwordTokenizer;
use wick_model::VocabSizes;

/// The tokenizer(s) of a run.
#[derive(Clone, Debug)]
pub struct Tokenizers {
    pub src: SubwordTokenizer,
    pub tgt: SubwordTokenizer,
    pub joint: bool,
}

impl Tokenizers {
    pub fn vocab_sizes(&self) -> VocabSizes {
        VocabSizes {
            src: self.src.vocab_size(),
            tgt: self.tgt.vocab_size(),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        if self.joint {
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.json"),
                self.src.to_json()?.as_bytes(),
            )?;
        } else {
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.src.json"),
                self.src.to_json()?.as_bytes(),
            )?;
            crate::checkpoint::write_atomic(
                &dir.join("tokenizer.tgt.json"),
                self.tgt.to_json()?.as_bytes(),
            )?;
        }
        Ok(())
    }

    pub fn load(dir: &Path, joint: bool) -> Result<Self> {
        if joint {
            let t = SubwordTokenizer::load(&dir.join("tokenizer.json"))?;
            Ok(Self {
                src: t.clone(),
                tgt: t,
                joint,
            })
        } else {
            Ok(Self {
                src: SubwordTokenizer::load(&dir.join("tokenizer.src.json"))?,
                tgt: SubwordTokenizer::load(&dir.join("tokenizer.tgt.json"))?,
                joint,
            })
        }
    }
}
