//! Padded batches. The teacher-forcing shift, padding, masks and token counts are computed
//! here, once; models never re-derive them.

use candle_core::{Device, Result, Tensor};

use crate::tokenizer::SpecialTokens;

/// A tokenised sentence pair (ids without `<s>`/`</s>`), with its index in the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub id: usize,
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

impl Example {
    /// Positions the source takes in a batch (`</s>` appended).
    pub fn src_len(&self) -> usize {
        self.src.len() + 1
    }

    /// Positions the target takes in a batch (`<s>` prepended for input, `</s>` appended
    /// for output).
    pub fn tgt_len(&self) -> usize {
        self.tgt.len() + 1
    }
}

/// Source side of a batch.
#[derive(Clone, Debug)]
pub struct SourceBatch {
    /// Corpus index of each row, to restore the input order after sorted decoding.
    pub ids: Vec<usize>,
    /// `(b, s)` u32: tokens, `</s>`, then `<pad>`.
    pub src: Tensor,
    /// `(b, s)` f32: 1 for real tokens (including `</s>`), 0 for padding.
    pub src_mask: Tensor,
    /// Real source positions of each row (tokens + `</s>`).
    pub src_lens: Vec<usize>,
    pub n_src_tokens: usize,
}

/// A training batch.
#[derive(Clone, Debug)]
pub struct Batch {
    pub source: SourceBatch,
    /// `(b, t)` u32: `<s> y₁ … yₙ` then `<pad>`.
    pub tgt_in: Tensor,
    /// `(b, t)` u32: `y₁ … yₙ </s>` then `<pad>`.
    pub tgt_out: Tensor,
    /// `(b, t)` f32: 1 where `tgt_out` is a real token.
    pub tgt_mask: Tensor,
    pub n_tgt_tokens: usize,
}

/// Pads rows to a `(b, max_len)` id tensor and a matching `{1, 0}` mask.
fn pad_rows(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let b = rows.len();
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![pad; b * len];
    let mut mask = vec![0f32; b * len];
    for (r, row) in rows.iter().enumerate() {
        ids[r * len..r * len + row.len()].copy_from_slice(row);
        mask[r * len..r * len + row.len()].fill(1.0);
    }
    Ok((
        Tensor::from_vec(ids, (b, len), device)?,
        Tensor::from_vec(mask, (b, len), device)?,
    ))
}

impl SourceBatch {
    pub fn new(
        ids: Vec<usize>,
        sources: &[&[u32]],
        special: SpecialTokens,
        device: &Device,
    ) -> Result<Self> {
        if sources.is_empty() {
            candle_core::bail!("empty batch")
        }
        let rows: Vec<Vec<u32>> = sources
            .iter()
            .map(|s| s.iter().copied().chain([special.eos]).collect())
            .collect();
        let src_lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let (src, src_mask) = pad_rows(&rows, special.pad, device)?;
        Ok(Self {
            ids,
            src,
            src_mask,
            n_src_tokens: src_lens.iter().sum(),
            src_lens,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl Batch {
    pub fn new(examples: &[&Example], special: SpecialTokens, device: &Device) -> Result<Self> {
        let ids = examples.iter().map(|e| e.id).collect();
        let sources: Vec<&[u32]> = examples.iter().map(|e| e.src.as_slice()).collect();
        let source = SourceBatch::new(ids, &sources, special, device)?;
        let tgt_in: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                [special.bos]
                    .into_iter()
                    .chain(e.tgt.iter().copied())
                    .collect()
            })
            .collect();
        let tgt_out: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| e.tgt.iter().copied().chain([special.eos]).collect())
            .collect();
        let n_tgt_tokens = tgt_out.iter().map(Vec::len).sum();
        let (tgt_in, _) = pad_rows(&tgt_in, special.pad, device)?;
        let (tgt_out, tgt_mask) = pad_rows(&tgt_out, special.pad, device)?;
        Ok(Self {
            source,
            tgt_in,
            tgt_out,
            tgt_mask,
            n_tgt_tokens,
        })
    }

    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }
}
