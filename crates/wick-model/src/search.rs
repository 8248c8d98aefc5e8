//! Search: turning a model's next-token distributions into output sequences.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use crate::model::{Memory, Seq2Seq};
use crate::ops;

/// Special token ids search needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
}

/// Greedy decoding with the key/value cache.
///
/// `max_len[i]` bounds the number of tokens generated for sentence `i` (not counting `</s>`).
/// Returns the generated ids without `<s>` and `</s>`. Sentences that finish early stop
/// contributing output, and their rows leave the batch once they are an eighth of it; the
/// batch stops as soon as all are done.
pub fn greedy<M>(
    model: &M,
    memory: &Memory,
    ids: SpecialIds,
    max_len: &[usize],
) -> Result<Vec<Vec<u32>>>
where
    M: Seq2Seq + Sync,
    M::Cache: Sync,
{
    by_sentence_groups(model, memory, max_len, |memory, max_len, cache| {
        greedy_group(model, memory, cache, ids, max_len)
    })
}

/// Finished rows leave a greedy batch once they are at least `1 / COMPACT_SHARE` of it.
const COMPACT_SHARE: usize = 8;

/// [`greedy`] of one group of sentences, from a decoding state `cache` for its rows.
///
/// Rows of sentences that have ended are dropped from the memory and the decoding state once
/// they make up an eighth of the batch. Why: a batch runs until its longest output ends, and
/// sentences of similar source lengths still end at different steps, so a batch kept whole
/// spent part of every late step on sentences that were done (CTranslate2 drops them too).
/// Dropping rows copies the decoding state, about what a step reads anyway, so it waits until
/// enough rows have ended. Outputs do not change: every row is decoded on its own.
fn greedy_group<M: Seq2Seq>(
    model: &M,
    memory: &Memory,
    mut cache: M::Cache,
    ids: SpecialIds,
    max_len: &[usize],
) -> Result<Vec<Vec<u32>>> {
    let b = memory.batch_size()?;
    if max_len.len() != b {
        candle_core::bail!("greedy: {} length limits for a batch of {b}", max_len.len())
    }
    let device = memory.states.device().clone();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done: Vec<bool> = max_len.iter().map(|&m| m == 0).collect();
    // The sentence of each row of the batch as it is now.
    let mut rows: Vec<usize> = (0..b).collect();
    let mut mem = memory.clone();
    let mut tokens = Tensor::full(ids.bos, (b, 1), &device)?;
    loop {
        let ended = rows.iter().filter(|&&s| done[s]).count();
        if ended == rows.len() {
            break;
        }
        if ended > 0 && ended * COMPACT_SHARE >= rows.len() {
            let keep: Vec<u32> = (0..rows.len())
                .filter(|&r| !done[rows[r]])
                .map(|r| r as u32)
                .collect();
            let index = Tensor::new(keep.as_slice(), &device)?;
            mem = mem.index_select(&index)?;
            model.move_cache(&mut cache, &index, Some(&index))?;
            tokens = tokens.index_select(&index, 0)?;
            rows = keep.iter().map(|&r| rows[r as usize]).collect();
        }
        let logits = model.decode_step(&mem, &tokens, &mut cache)?; // (rows, V)
        let next = ops::argmax_last_dim(&logits)?; // (rows,)
        // The one copy to the host per step that decoding needs: which sentences have ended.
        let next_host = next.to_vec1::<u32>()?;
        for (&s, &tok) in rows.iter().zip(&next_host) {
            if done[s] {
                continue;
            }
            if tok == ids.eos {
                done[s] = true;
            } else {
                out[s].push(tok);
                done[s] = out[s].len() >= max_len[s];
            }
        }
        tokens = next.reshape((rows.len(), 1))?;
    }
    Ok(out)
}

/// Sentences per thread below which a batch is decoded as one group.
const MIN_SENTENCES_PER_GROUP: usize = 4;

/// How a batch of `b` sentences is cut for inference in groups, one per thread of the current
/// rayon pool: consecutive `(start, len)` ranges; a single one off the kernel path (a GPU
/// runs the batch as one), for small batches, and where this thread's products already run
/// whole (a training shard, `wick_train::step`).
pub(crate) fn sentence_groups(device: &candle_core::Device, b: usize) -> Vec<(usize, usize)> {
    let whole = wick_kernels::scope::products_whole();
    let groups = if ops::kernels_on(device) && !whole {
        rayon::current_num_threads().min(b / MIN_SENTENCES_PER_GROUP)
    } else {
        1
    };
    if groups <= 1 {
        return vec![(0, b)];
    }
    let per_group = b.div_ceil(groups);
    (0..b.div_ceil(per_group))
        .map(|g| (g * per_group, per_group.min(b - g * per_group)))
        .collect()
}

/// Decodes consecutive groups of sentences on separate threads (CPU), one group per thread:
/// `decode(memory, max_len, cache)` gets a group's memory rows, length limits and decoding
/// state; the outputs are concatenated in sentence order.
///
/// Why: a decoding step is a chain of small ops on a few dozen rows. Split op by op across
/// threads, the threads met after every op and half of the work did not split at all: two
/// threads decoded the small preset only 1.3× as fast as one. With whole sentences per
/// thread every thread stays busy through the step. The decoding state is started once for
/// the whole batch (the decoder's weights are packed once and shared) and its rows handed
/// out as views. Outputs do not depend on the grouping: every op treats each row on its own.
fn by_sentence_groups<M, T, F>(
    model: &M,
    memory: &Memory,
    max_len: &[usize],
    decode: F,
) -> Result<Vec<T>>
where
    M: Seq2Seq + Sync,
    M::Cache: Sync,
    T: Send,
    F: Fn(&Memory, &[usize], M::Cache) -> Result<Vec<T>> + Sync,
{
    let b = memory.batch_size()?;
    if max_len.len() != b {
        candle_core::bail!("search: {} length limits for a batch of {b}", max_len.len())
    }
    if b == 0 {
        return Ok(Vec::new());
    }
    let groups = sentence_groups(memory.states.device(), b);
    let cache = model.start_decoding(memory)?;
    if groups.len() <= 1 {
        return decode(memory, max_len, cache);
    }
    let scope = ops::Scope::current();
    let parts: Vec<Result<Vec<T>>> = groups
        .into_par_iter()
        .map(|(start, len)| {
            scope.enter(|| {
                decode(
                    &memory.narrow(start, len)?,
                    &max_len[start..start + len],
                    model.narrow_cache(&cache, start, len)?,
                )
            })
        })
        .collect();
    let mut out = Vec::with_capacity(b);
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Greedy decoding without the cache: every step runs the decoder over the whole prefix.
/// Gives the same output as [`greedy`] at quadratic cost; kept to test the cache and to
/// measure what it saves (`wick bench decode`).
pub fn greedy_uncached<M: Seq2Seq>(
    model: &M,
    memory: &Memory,
    ids: SpecialIds,
    max_len: &[usize],
) -> Result<Vec<Vec<u32>>> {
    let mut prefix: Option<Tensor> = None;
    greedy_loop(memory, ids, max_len, |tokens| {
        let p = match prefix.take() {
            Some(p) => Tensor::cat(&[&p, tokens], 1)?,
            None => tokens.clone(),
        };
        let t = p.dim(1)?;
        let logits = model.forward_t(memory, &p, false)?; // (b, t, V)
        prefix = Some(p);
        logits.narrow(1, t - 1, 1)?.squeeze(1)
    })
}

/// The greedy loop of [`greedy_uncached`], given `next_logits`: tokens fed at this step
/// `(b, 1)` → logits `(b, V)`. The batch is kept whole.
fn greedy_loop(
    memory: &Memory,
    ids: SpecialIds,
    max_len: &[usize],
    mut next_logits: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let b = memory.batch_size()?;
    if max_len.len() != b {
        candle_core::bail!("greedy: {} length limits for a batch of {b}", max_len.len())
    }
    let device = memory.states.device();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done: Vec<bool> = max_len.iter().map(|&m| m == 0).collect();
    let mut tokens = Tensor::full(ids.bos, (b, 1), device)?;
    let longest = max_len.iter().copied().max().unwrap_or(0);
    for _ in 0..longest {
        if done.iter().all(|&d| d) {
            break;
        }
        let logits = next_logits(&tokens)?; // (b, V)
        let next = ops::argmax_last_dim(&logits)?; // (b,)
        // The one copy to the host per step that decoding needs: which sentences have ended.
        let next_host = next.to_vec1::<u32>()?;
        for (i, &tok) in next_host.iter().enumerate() {
            if done[i] {
                continue;
            }
            if tok == ids.eos {
                done[i] = true;
            } else {
                out[i].push(tok);
                done[i] = out[i].len() >= max_len[i];
            }
        }
        tokens = next.reshape((b, 1))?;
    }
    Ok(out)
}

/// One finished hypothesis of beam search.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// Generated ids, without `<s>` and `</s>`.
    pub tokens: Vec<u32>,
    /// Σ log p of the tokens and the final `</s>` (when it was generated).
    pub log_prob: f64,
    /// `log_prob / length_penalty(len)`: what beams are ranked by.
    pub score: f64,
}

/// Beam search settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeamConfig {
    pub beam: usize,
    /// α of the GNMT length penalty `((5 + len) / 6)^α` (Wu et al., 2016); 0 ranks by Σ log p.
    pub length_penalty: f64,
    /// Hypotheses returned per sentence (≤ beam).
    pub n_best: usize,
}

/// GNMT length penalty of a hypothesis of `len` scored tokens (including `</s>`).
pub fn length_penalty(len: usize, alpha: f64) -> f64 {
    if alpha == 0.0 {
        1.0
    } else {
        ((5.0 + len as f64) / 6.0).powf(alpha)
    }
}

/// Batched beam search with the key/value cache.
///
/// Every sentence keeps `beam` live hypotheses; each step scores all `beam × V` extensions,
/// moves those ending in `</s>` to the finished list and keeps the best `beam` others. A
/// sentence is done once it has `beam` finished hypotheses, or when its live hypotheses
/// reach `max_len[i]` tokens (they are then finished without `</s>`). Rows of finished
/// sentences are dropped from the batch, so the cost follows the sentences still decoding.
/// Returns, per sentence, up to `n_best` hypotheses sorted by score (best first).
pub fn beam_search<M>(
    model: &M,
    memory: &Memory,
    ids: SpecialIds,
    max_len: &[usize],
    cfg: BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>>
where
    M: Seq2Seq + Sync,
    M::Cache: Sync,
{
    by_sentence_groups(model, memory, max_len, |memory, max_len, cache| {
        beam_search_group(model, memory, cache, ids, max_len, cfg)
    })
}

/// [`beam_search`] of one group of sentences, from a decoding state `cache` for its rows.
fn beam_search_group<M: Seq2Seq>(
    model: &M,
    memory: &Memory,
    cache: M::Cache,
    ids: SpecialIds,
    max_len: &[usize],
    cfg: BeamConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    let b = memory.batch_size()?;
    let k = cfg.beam.max(1);
    if max_len.len() != b {
        candle_core::bail!(
            "beam search: {} length limits for a batch of {b}",
            max_len.len()
        )
    }
    let device = memory.states.device().clone();
    // Per sentence: live beams (tokens, log p) and finished hypotheses.
    struct Live {
        tokens: Vec<u32>,
        log_prob: f64,
    }
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); b];
    let mut live: Vec<Vec<Live>> = (0..b)
        .map(|_| {
            vec![Live {
                tokens: Vec::new(),
                log_prob: 0.0,
            }]
        })
        .collect();
    // `active` lists the sentences still decoding, in the order of their rows in the batch;
    // each has `live[s].len()` consecutive rows.
    let mut active: Vec<usize> = (0..b).filter(|&s| max_len[s] > 0).collect();
    for s in 0..b {
        if max_len[s] == 0 {
            finished[s].push(Hypothesis {
                tokens: Vec::new(),
                log_prob: 0.0,
                score: 0.0,
            });
        }
    }
    let rows: Vec<u32> = active.iter().map(|&s| s as u32).collect();
    if rows.is_empty() {
        return Ok(finished);
    }
    // With a model whose hypotheses can share their sentence's memory, the memory (and what the
    // decoding state derives from it) keeps one row per active sentence, in `active` order;
    // otherwise one row per hypothesis, like the decoder's own state.
    let shared = model.beams_share_memory();
    let (mut mem, mut cache) = if rows.len() == b {
        (memory.clone(), cache)
    } else {
        let index = Tensor::new(rows.as_slice(), &device)?;
        (
            memory.index_select(&index)?,
            model.select_cache(&cache, &index)?,
        )
    };
    let mut tokens = Tensor::full(ids.bos, (rows.len(), 1), &device)?;
    let mut step = 0usize;
    while !active.is_empty() {
        step += 1;
        // (sentence, rows) of the batch as it is, to tell below whether any row changes source.
        let layout: Vec<(usize, usize)> = active.iter().map(|&s| (s, live[s].len())).collect();
        let logits = model.decode_step(&mem, &tokens, &mut cache)?; // (rows, V)
        // Beam search ranks its candidates on the host: each row's 2k best tokens (2k are
        // enough to find k that do not end the sentence) come over once per step.
        let tops = ops::log_softmax_top_k(&logits, 2 * k)?;
        let mut next_rows: Vec<u32> = Vec::new();
        let mut next_tokens: Vec<u32> = Vec::new();
        let mut next_active = Vec::new();
        // Positions in `active` of the sentences that go on.
        let mut kept: Vec<u32> = Vec::new();
        let mut row = 0usize;
        for (position, &s) in active.iter().enumerate() {
            let n_live = live[s].len();
            // Candidates (log p, beam, token), best first.
            let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(n_live * 2 * k);
            for (j, lv) in live[s].iter().enumerate() {
                for &(l, t) in &tops[row + j] {
                    cands.push((lv.log_prob + l as f64, j, t));
                }
            }
            cands.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2)));
            let mut new_live = Vec::new();
            for (lp, j, t) in cands {
                if new_live.len() == k || finished[s].len() >= k {
                    break;
                }
                let prefix = &live[s][j].tokens;
                if t == ids.eos {
                    let len = prefix.len() + 1;
                    finished[s].push(Hypothesis {
                        tokens: prefix.clone(),
                        log_prob: lp,
                        score: lp / length_penalty(len, cfg.length_penalty),
                    });
                } else {
                    let mut toks = prefix.clone();
                    toks.push(t);
                    new_live.push((
                        Live {
                            tokens: toks,
                            log_prob: lp,
                        },
                        row + j,
                        t,
                    ));
                }
            }
            if finished[s].len() >= k || step >= max_len[s] {
                // Out of length: live hypotheses end here, scored without `</s>`.
                if finished[s].len() < k {
                    for (lv, _, _) in new_live {
                        let len = lv.tokens.len();
                        finished[s].push(Hypothesis {
                            score: lv.log_prob / length_penalty(len, cfg.length_penalty),
                            tokens: lv.tokens,
                            log_prob: lv.log_prob,
                        });
                    }
                }
            } else {
                next_active.push(s);
                kept.push(position as u32);
                live[s] = new_live
                    .into_iter()
                    .map(|(lv, r, t)| {
                        next_rows.push(r as u32);
                        next_tokens.push(t);
                        lv
                    })
                    .collect();
            }
            row += n_live;
        }
        let left = kept.len() < active.len();
        active = next_active;
        if active.is_empty() {
            break;
        }
        let index = Tensor::new(next_rows.as_slice(), &device)?;
        // Every new row continues a hypothesis of its own sentence. The decoder's own state
        // moves every step (in place); the memory and what derives from it only when
        // sentences leave, then by sentence where the memory is shared. Copying the memory
        // and its projected keys/values each step was ~50 MB for the small preset at beam 5.
        if shared {
            // A memory row serves its sentence's hypotheses as consecutive rows, so every
            // sentence must have as many: the candidate rule above keeps `beam` for each
            // sentence still decoding (at the first step, with a vocabulary smaller than
            // 2·beam, every token but `</s>`).
            let g = live[active[0]].len();
            if let Some(&s) = active.iter().find(|&&s| live[s].len() != g) {
                candle_core::bail!(
                    "beam search: sentence {s} keeps {} hypotheses, sentence {} {g}",
                    live[s].len(),
                    active[0]
                )
            }
            let sources = if left {
                let sources = Tensor::new(kept.as_slice(), &device)?;
                mem = mem.index_select(&sources)?;
                Some(sources)
            } else {
                None
            };
            model.move_cache(&mut cache, &index, sources.as_ref())?;
        } else if active.iter().map(|&s| (s, live[s].len())).eq(layout) {
            model.move_cache(&mut cache, &index, None)?;
        } else {
            mem = mem.index_select(&index)?;
            model.move_cache(&mut cache, &index, Some(&index))?;
        }
        tokens = Tensor::new(next_tokens.as_slice(), &device)?.reshape((next_tokens.len(), 1))?;
    }
    for hyps in &mut finished {
        hyps.sort_by(|a, c| c.score.total_cmp(&a.score));
        hyps.truncate(cfg.n_best.max(1));
    }
    Ok(finished)
}

/// Σ log p of `tokens` followed by `</s>` under teacher forcing, for one sentence of
/// `memory` (batch of 1): the score beam search assigns, recomputed from scratch.
pub fn forced_log_prob<M: Seq2Seq>(
    model: &M,
    memory: &Memory,
    ids: SpecialIds,
    tokens: &[u32],
    with_eos: bool,
) -> Result<f64> {
    let device = memory.states.device();
    let input: Vec<u32> = std::iter::once(ids.bos)
        .chain(tokens.iter().copied())
        .collect();
    let target: Vec<u32> = tokens
        .iter()
        .copied()
        .chain(std::iter::once(ids.eos))
        .collect();
    let n = if with_eos { target.len() } else { tokens.len() };
    let t = Tensor::new(input.as_slice(), device)?.unsqueeze(0)?;
    let lp = ops::log_softmax_last_dim(&model.forward_t(memory, &t, false)?)?
        .squeeze(0)?
        .to_vec2::<f32>()?;
    Ok((0..n).map(|i| lp[i][target[i] as usize] as f64).sum())
}
