//! Subword tokenizers: BPE (Sennrich et al., 2016) trained with the `tokenizers` crate.
//!
//! Text is split on spaces with a Metaspace pre-tokenizer (spaces become `▁` and stay part of
//! the tokens), so decoding restores the original spacing and punctuation exactly. Characters
//! never seen in training fall back to byte tokens `<0x00>`…`<0xFF>` instead of `<unk>`, so any
//! UTF-8 text round-trips.

use std::path::Path;
use std::str::FromStr;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer};

use crate::error::{DataError, Result};

/// Ids of the special tokens, identical in every wick tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
}

pub const SPECIALS: SpecialTokens = SpecialTokens {
    pad: 0,
    bos: 1,
    eos: 2,
    unk: 3,
};
const SPECIAL_NAMES: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// A trained tokenizer with wick's special tokens at fixed ids.
#[derive(Clone)]
pub struct SubwordTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for SubwordTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubwordTokenizer(vocab {})", self.vocab_size())
    }
}

/// The byte-fallback token of byte `b`: `<0x41>`.
fn byte_token(b: u8) -> String {
    format!("<0x{b:02X}>")
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

impl SubwordTokenizer {
    /// Learns a BPE vocabulary of about `vocab_size` entries (special and byte tokens
    /// included) from `texts`.
    pub fn train<S: AsRef<str> + Send>(
        texts: impl Iterator<Item = S> + Send,
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<Self> {
        const N_BYTES: usize = 256;
        let merges_budget = vocab_size
            .checked_sub(N_BYTES)
            .filter(|&n| n > SPECIAL_NAMES.len())
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "vocab_size {vocab_size} is too small: it must exceed {}",
                    N_BYTES + SPECIAL_NAMES.len()
                ))
            })?;
        let here = Path::new("<training>");
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        let specials = SPECIAL_NAMES
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(merges_budget)
            .min_frequency(min_frequency)
            .special_tokens(specials)
            .show_progress(false)
            .build()
            .into();
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|e| tok_err(here, e))?;

        // Append the 256 byte tokens and switch byte fallback on. The trained model is edited
        // through its JSON form because `BPE` does not expose its merges.
        let mut json: serde_json::Value =
            serde_json::from_str(&tokenizer.to_string(false).map_err(|e| tok_err(here, e))?)
                .map_err(|e| tok_err(here, e))?;
        let vocab = json["model"]["vocab"]
            .as_object_mut()
            .ok_or_else(|| tok_err(here, "trained model has no vocab"))?;
        let mut next = vocab.len() as u64;
        for b in 0..=255u8 {
            let name = byte_token(b);
            if !vocab.contains_key(&name) {
                vocab.insert(name, next.into());
                next += 1;
            }
        }
        Self::from_edited_json(json, here)
    }

    /// A tokenizer of exactly `vocab_size` entries and no merges: the special tokens, the word
    /// boundary `▁`, numbered stand-in words `▁w5`, `▁w6`, … and the 256 byte tokens, in that
    /// id order. Text still round-trips (through the byte tokens). For models whose weights
    /// are random (`wick bench decode --preset P --write-run DIR`): exporting one needs a
    /// vocabulary of its size, and no text is ever translated with it.
    pub fn numbered(vocab_size: usize) -> Result<Self> {
        const N_BYTES: usize = 256;
        // The specials, `▁` and the bytes come first; the stand-in words fill the rest.
        let fixed = SPECIAL_NAMES.len() + 1 + N_BYTES;
        let words = vocab_size.checked_sub(fixed).ok_or_else(|| {
            DataError::Invalid(format!(
                "vocab_size {vocab_size} is too small: it must be at least {fixed}"
            ))
        })?;
        let here = Path::new("<numbered>");
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        let specials: Vec<AddedToken> = SPECIAL_NAMES
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        let mut json: serde_json::Value =
            serde_json::from_str(&tokenizer.to_string(false).map_err(|e| tok_err(here, e))?)
                .map_err(|e| tok_err(here, e))?;
        // Without `▁` itself in the vocabulary it would go through the byte tokens, and the
        // decoder would not turn it back into a space.
        let names = (SPECIAL_NAMES.iter().map(|s| s.to_string()))
            .chain(std::iter::once("▁".to_string()))
            .chain((0..words).map(|i| format!("▁w{}", SPECIAL_NAMES.len() + 1 + i)))
            .chain((0..=255u8).map(byte_token));
        let vocab: serde_json::Map<String, serde_json::Value> = names
            .enumerate()
            .map(|(id, name)| (name, (id as u64).into()))
            .collect();
        json["model"]["vocab"] = vocab.into();
        Self::from_edited_json(json, here)
    }

    /// The tokenizer of a BPE model's JSON form whose vocabulary holds the specials at ids
    /// 0-3 and the byte tokens: with byte fallback and the decoder that undoes it.
    fn from_edited_json(mut json: serde_json::Value, here: &Path) -> Result<Self> {
        let model = &mut json["model"];
        model["byte_fallback"] = true.into();
        model["unk_token"] = "<unk>".into();
        let decoder = DecoderWrapper::Sequence(Sequence::new(vec![
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true)),
        ]));
        json["decoder"] = serde_json::to_value(&decoder).map_err(|e| tok_err(here, e))?;
        let inner = Tokenizer::from_str(&json.to_string()).map_err(|e| tok_err(here, e))?;
        let tok = Self { inner };
        tok.check_specials(here)?;
        Ok(tok)
    }

    fn check_specials(&self, path: &Path) -> Result<()> {
        for (id, name) in SPECIAL_NAMES.iter().enumerate() {
            if self.inner.token_to_id(name) != Some(id as u32) {
                return Err(tok_err(
                    path,
                    format!(
                        "not a wick tokenizer: expected special token {name} at id {id} (wick needs <pad> <s> </s> <unk> at ids 0-3)"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(tok_err(path, "file not found"));
        }
        let inner =
            Tokenizer::from_file(path).map_err(|e| tok_err(path, format!("cannot parse: {e}")))?;
        let tok = Self { inner };
        tok.check_specials(path)?;
        Ok(tok)
    }

    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| tok_err(Path::new("<memory>"), e))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| tok_err(path, e))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without `<s>`/`</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(Path::new("<encode>"), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts in parallel.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| tok_err(Path::new("<encode>"), e))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(Path::new("<decode>"), e))
    }

    /// Every token string in id order (`0 .. vocab_size`), as engines that read a vocabulary
    /// list want it. Errors if an id in that range has no token.
    pub fn vocabulary(&self) -> Result<Vec<String>> {
        (0..self.vocab_size() as u32)
            .map(|id| {
                self.inner.id_to_token(id).ok_or_else(|| {
                    tok_err(
                        Path::new("<vocabulary>"),
                        format!(
                            "id {id} has no token although the vocabulary has {} entries",
                            self.vocab_size()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The surface string of each token (for attention plots).
    pub fn tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.inner
                    .id_to_token(id)
                    .unwrap_or_else(|| format!("#{id}"))
            })
            .collect()
    }
}
