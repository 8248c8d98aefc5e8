//! The attention of a translation: what each output token attended to in the source, per
//! attention layer and head (`wick translate --attention-json`, and the alignment pictures
//! of `--attention`).

use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;
use wick_data::SourceBatch;
use wick_data::tokenizer::SPECIALS;
use wick_model::{Model, Seq2Seq};

use crate::config::DecodeConfig;
use crate::run::Tokenizers;
use crate::translator::{decode_batches, greedy_or_best, output_limit, source_limit};

/// The attention of one translated sentence.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionMap {
    pub source: String,
    pub translation: String,
    /// Source subword tokens and `</s>` (the columns).
    pub src_tokens: Vec<String>,
    /// Output subword tokens and `</s>` (the rows); row `t` is the attention while
    /// predicting token `t`.
    pub tgt_tokens: Vec<String>,
    /// `[layer][head][target][source]` probabilities; every row sums to 1. A model with one
    /// attention has one layer of one head.
    pub layers: Vec<Vec<Vec<Vec<f32>>>>,
}

impl AttentionMap {
    /// Head-averaged weights of `layer`, `[target][source]`.
    pub fn mean_over_heads(&self, layer: usize) -> Vec<Vec<f32>> {
        let heads = &self.layers[layer];
        let scale = 1.0 / heads.len() as f32;
        (0..self.tgt_tokens.len())
            .map(|t| {
                (0..self.src_tokens.len())
                    .map(|s| heads.iter().map(|h| h[t][s]).sum::<f32>() * scale)
                    .collect()
            })
            .collect()
    }
}

/// Translates `sentence` with `decode` and records the model's attention over it
/// (recomputed by a teacher-forced pass over the output, which gives the same weights as
/// incremental decoding since the decoder is causal).
/// `model` should be laid out for decoding.
pub(crate) fn attention_map(
    model: &Model,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sentence: &str,
) -> Result<AttentionMap> {
    let out = decode_batches(model, tok, decode, &[sentence], |m, mem, l| {
        greedy_or_best(m, mem, l, decode)
    })?
    .pop()
    .unwrap_or_default();
    let limit = source_limit(model);
    let mut src = tok.src.encode(sentence)?;
    src.truncate(limit - 1);
    let max_len = output_limit(decode, src.len(), limit);
    // Without `</s>` (the length limit was reached) the rows are the output tokens only.
    let finished = out.len() < max_len;
    let mut tgt_in = vec![SPECIALS.bos];
    tgt_in.extend_from_slice(&out);
    let mut tgt_tokens = tok.tgt.tokens(&out);
    if finished {
        tgt_tokens.push("</s>".to_string());
    } else {
        tgt_in.pop();
    }
    let mut src_tokens = tok.src.tokens(&src);
    src_tokens.push("</s>".to_string());

    let batch = SourceBatch::new(vec![0], &[src.as_slice()], SPECIALS, model.device())?;
    let memory = model.encode(&batch.src, &batch.src_mask, false)?;
    let tgt_in = Tensor::new(tgt_in.as_slice(), model.device())?.unsqueeze(0)?;
    let layers = model
        .attention(&memory, &tgt_in)?
        .into_iter()
        .map(|probs| {
            probs
                .squeeze(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec3()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(AttentionMap {
        source: sentence.to_string(),
        translation: tok.tgt.decode(&out)?,
        src_tokens,
        tgt_tokens,
        layers,
    })
}

/// A subword as shown on an axis: word-initial pieces lose the `▁` marker, pieces inside a
/// word get a leading `##` (so the plot reads as words, and needs no `▁` glyph).
pub fn display_token(t: &str) -> String {
    match t.strip_prefix('▁') {
        Some("") => "▁".to_string(),
        Some(rest) => rest.to_string(),
        None if t == "</s>" || t.starts_with("<0x") => t.to_string(),
        None => format!("##{t}"),
    }
}
