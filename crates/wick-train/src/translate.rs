//! Batched translation: sources are sorted by length into token-budget batches, decoded
//! greedily or with beam search, and returned in input order.

use anyhow::Result;
use wick_data::SourceBatch;
use wick_data::batcher::token_batches;
use wick_data::tokenizer::SPECIALS;
use wick_model::search::{BeamConfig, SpecialIds, beam_search, greedy};
use wick_model::{Seq2Seq, Transformer};

use crate::config::DecodeConfig;
use crate::run::Tokenizers;

/// Subword ids of each translation, in input order.
pub fn translate_ids(
    model: &Transformer,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[String],
) -> Result<Vec<Vec<u32>>> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let max_positions = model.config().max_positions;
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let mut src_ids = tok.src.encode_batch(&refs)?;
    // The source plus `</s>` must fit the position table; longer inputs are cut.
    for ids in &mut src_ids {
        ids.truncate(max_positions - 1);
    }
    let lengths: Vec<(usize, usize)> = src_ids.iter().map(|s| (s.len() + 1, s.len() + 1)).collect();
    let budget = decode.batch_tokens.max(max_positions);
    let batches = token_batches(&lengths, budget, usize::MAX, None)?;
    let special = SpecialIds {
        bos: SPECIALS.bos,
        eos: SPECIALS.eos,
    };
    let mut out = vec![Vec::new(); sources.len()];
    for rows in batches {
        let srcs: Vec<&[u32]> = rows.iter().map(|&i| src_ids[i].as_slice()).collect();
        let batch = SourceBatch::new(rows.clone(), &srcs, SPECIALS, model.device())?;
        let memory = model.encode(&batch.src, &batch.src_mask, false)?;
        let max_len: Vec<usize> = srcs
            .iter()
            .map(|s| {
                ((decode.max_len_a * s.len() as f64) as usize + decode.max_len_b)
                    .min(max_positions - 1)
            })
            .collect();
        let hyps = if decode.beam <= 1 {
            greedy(model, &memory, special, &max_len)?
        } else {
            let cfg = BeamConfig {
                beam: decode.beam,
                length_penalty: decode.length_penalty,
                n_best: 1,
            };
            beam_search(model, &memory, special, &max_len, cfg)?
                .into_iter()
                .map(|mut h| h.swap_remove(0).tokens)
                .collect()
        };
        for (i, hyp) in rows.into_iter().zip(hyps) {
            out[i] = hyp;
        }
    }
    Ok(out)
}

/// Detokenised translations, in input order.
pub fn translate(
    model: &Transformer,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[String],
) -> Result<Vec<String>> {
    translate_ids(model, tok, decode, sources)?
        .iter()
        .map(|ids| Ok(tok.tgt.decode(ids)?))
        .collect()
}
