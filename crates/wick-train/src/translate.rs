//! Batched translation: sources are sorted by length into token-budget batches, decoded
//! greedily or with beam search, and returned in input order.

use anyhow::Result;
use wick_data::SourceBatch;
use wick_data::batcher::token_batches;
use wick_data::tokenizer::SPECIALS;
use wick_model::search::{BeamConfig, SpecialIds, beam_search, greedy};
use wick_model::{Memory, Seq2Seq, Transformer};

use crate::config::DecodeConfig;
use crate::run::Tokenizers;

/// Encodes `sources`, decodes them in length-sorted token-budget batches with `search`
/// (given the model, laid out for decoding once for all the batches
/// ([`Transformer::for_decoding`]), the encoded batch and each row's output length limit)
/// and returns the results in input order.
pub(crate) fn decode_batches<T: Clone + Default>(
    model: &Transformer,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[String],
    mut search: impl FnMut(&Transformer, &Memory, &[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let model = &model.for_decoding()?;
    let max_positions = model.config().max_positions;
    // Inputs far longer than the position table are cut before tokenization, so a huge
    // line costs no more than a long sentence; they are cut to the table below anyway.
    let byte_cap = max_positions * crate::prepare::MAX_BYTES_PER_TOKEN;
    let refs: Vec<&str> = sources
        .iter()
        .map(|s| {
            let mut end = byte_cap.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        })
        .collect();
    let mut src_ids = tok.src.encode_batch(&refs)?;
    // The source plus `</s>` must fit the position table; longer inputs are cut.
    for ids in &mut src_ids {
        ids.truncate(max_positions - 1);
    }
    let lengths: Vec<(usize, usize)> = src_ids.iter().map(|s| (s.len() + 1, s.len() + 1)).collect();
    let budget = decode.batch_tokens.max(max_positions);
    let batches = token_batches(&lengths, budget, usize::MAX, None)?;
    let mut out = vec![T::default(); sources.len()];
    for rows in batches {
        let srcs: Vec<&[u32]> = rows.iter().map(|&i| src_ids[i].as_slice()).collect();
        let batch = SourceBatch::new(rows.clone(), &srcs, SPECIALS, model.device())?;
        let memory = model.encode(&batch.src, &batch.src_mask, false)?;
        let max_len: Vec<usize> = srcs
            .iter()
            .map(|s| output_limit(decode, s.len(), max_positions))
            .collect();
        for (i, result) in rows.into_iter().zip(search(model, &memory, &max_len)?) {
            out[i] = result;
        }
    }
    Ok(out)
}

/// Most output tokens (without `</s>`) for a source of `src_len` tokens:
/// `max_len_a · src_len + max_len_b`, within the position table.
pub(crate) fn output_limit(decode: &DecodeConfig, src_len: usize, max_positions: usize) -> usize {
    ((decode.max_len_a * src_len as f64) as usize + decode.max_len_b).min(max_positions - 1)
}

pub(crate) const SPECIAL_IDS: SpecialIds = SpecialIds {
    bos: SPECIALS.bos,
    eos: SPECIALS.eos,
};

/// Subword ids of each translation, in input order: greedy with `decode.beam = 1`, else the
/// best beam hypothesis.
pub fn translate_ids(
    model: &Transformer,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[String],
) -> Result<Vec<Vec<u32>>> {
    decode_batches(model, tok, decode, sources, |model, memory, max_len| {
        if decode.beam <= 1 {
            return Ok(greedy(model, memory, SPECIAL_IDS, max_len)?);
        }
        let cfg = BeamConfig {
            beam: decode.beam,
            length_penalty: decode.length_penalty,
            n_best: 1,
        };
        Ok(beam_search(model, memory, SPECIAL_IDS, max_len, cfg)?
            .into_iter()
            .map(|mut h| h.swap_remove(0).tokens)
            .collect())
    })
}

/// The `decode.n_best` best beam hypotheses of each source as (text, score), best first, in
/// input order. The score is Σ log p divided by the length penalty. Uses beam search even
/// with `beam = 1` (which equals greedy decoding) so that every output has a score.
pub fn translate_nbest(
    model: &Transformer,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[String],
) -> Result<Vec<Vec<(String, f64)>>> {
    if decode.n_best == 0 || decode.n_best > decode.beam {
        anyhow::bail!(
            "n-best {} needs 1 <= n-best <= beam (beam is {})",
            decode.n_best,
            decode.beam
        )
    }
    let cfg = BeamConfig {
        beam: decode.beam,
        length_penalty: decode.length_penalty,
        n_best: decode.n_best,
    };
    let hyps = decode_batches(model, tok, decode, sources, |model, memory, max_len| {
        Ok(beam_search(model, memory, SPECIAL_IDS, max_len, cfg)?)
    })?;
    hyps.into_iter()
        .map(|hs| {
            hs.into_iter()
                .map(|h| Ok((tok.tgt.decode(&h.tokens)?, h.score)))
                .collect()
        })
        .collect()
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
