//! A training batch's loss and gradients, computed in shards of its sentences side by side.
//!
//! With every op of the step split across the threads, the threads meet after each op, and one
//! core idles through every op that runs on a single thread (Candle's gradient sums and zeroed
//! gradient buffers in backward, copies, small ops). Here the batch is cut into slices of whole
//! sentences; each runs forward, loss and backward on its own thread through its own replica
//! of the model, its products left whole when there is a shard per thread
//! (`wick_model::ops::with_whole_products`; rayon still lets an idle thread take over another
//! shard's parallel kernels), and the gradients are summed. Measured on the small benchmark
//! preset (2 cores): two one-thread processes on 32 sentences each took 429–436 ms per step
//! side by side, the two-thread step on all 64 sentences 523–560 ms.
//!
//! Determinism: the shard count is a setting (`train.shards`, default [`SHARDS`]) and the sums
//! run in shard order, so a run gives the same numbers with any number of threads. Each shard
//! draws its dropout masks from its own stream; the first shard's is the model's (the one
//! checkpoints save), the others are reseeded from it at every batch.
//!
//! [`add_grads`] is the one place where gradients of separately computed parts of an update
//! meet: shards, and batches accumulated into one update. Data-parallel training across
//! processes or GPUs would all-reduce there.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;
use wick_model::loss::{LossSums, projected_label_smoothed_cross_entropy};
use wick_model::{DropoutRng, Model, ModelConfig, ParamStore, Seq2Seq, ops};

/// Slices of sentences each training batch is cut into by default (`train.shards`; fewer when a
/// batch has fewer sentences): one per core of the 2-core machines this was measured on.
pub const SHARDS: usize = 2;

/// The tensors of one slice of a batch, as in `wick_data::Batch`.
pub struct ShardInput {
    /// `(b, s)` u32.
    pub src: Tensor,
    /// `(b, s)` f32, 1 on real tokens.
    pub src_mask: Tensor,
    /// `(b, t)` u32.
    pub tgt_in: Tensor,
    /// `(b, t)` u32.
    pub tgt_out: Tensor,
    /// `(b, t)` f32, 1 on real tokens.
    pub tgt_mask: Tensor,
}

impl From<&wick_data::Batch> for ShardInput {
    fn from(b: &wick_data::Batch) -> Self {
        Self {
            src: b.source.src.clone(),
            src_mask: b.source.src_mask.clone(),
            tgt_in: b.tgt_in.clone(),
            tgt_out: b.tgt_out.clone(),
            tgt_mask: b.tgt_mask.clone(),
        }
    }
}

/// `model` followed by `shards − 1` replicas on the same parameters (built from `store`), each
/// with a dropout stream of its own; one replica off the kernel path (a GPU, or the forced
/// reference path), where the shards would only take turns on the same device.
pub fn replicas(
    model: &Model,
    cfg: &ModelConfig,
    store: &ParamStore,
    device: &Device,
    shards: usize,
) -> Result<Vec<Model>> {
    let shards = if ops::kernels_on(device) {
        shards.max(1)
    } else {
        1
    };
    let mut out = vec![model.clone()];
    for _ in 1..shards {
        let vb = store.var_builder(DType::F32, device);
        out.push(cfg.build(model.vocab(), DropoutRng::new(0), vb)?);
    }
    Ok(out)
}

/// Cuts `weights.len()` consecutive items into at most `parts` non-empty ranges of about equal
/// total weight (a batch's sentences by target tokens).
pub fn shard_ranges(weights: &[usize], parts: usize) -> Vec<Range<usize>> {
    let n = weights.len();
    let parts = parts.clamp(1, n.max(1));
    let total: usize = weights.iter().sum();
    let mut ends: Vec<usize> = Vec::with_capacity(parts);
    let mut acc = 0;
    for (i, w) in weights.iter().enumerate() {
        let k = ends.len() + 1;
        if k >= parts {
            break;
        }
        let before = acc;
        acc += w;
        // Item i reaches the k-th share (k·total/parts, compared times `parts`): end the range
        // before or after it, whichever is closer, leaving an item for every later range.
        if acc * parts >= k * total {
            let start = ends.last().copied().unwrap_or(0);
            let (under, over) = (k * total - before * parts, acc * parts - k * total);
            let end = if i > start && under < over { i } else { i + 1 };
            ends.push(end.min(n - (parts - k)));
        }
    }
    let mut start = 0;
    let mut ranges: Vec<Range<usize>> = ends
        .iter()
        .map(|&end| {
            let r = start..end;
            start = end;
            r
        })
        .collect();
    ranges.push(start..n);
    ranges
}

/// Adds `other`'s gradient of each of `vars` into `acc` (a variable absent from one side keeps
/// the other's), the sums in parallel over variables. The seam where a multi-process
/// data-parallel all-reduce would go.
pub fn add_grads(acc: &mut GradStore, other: &GradStore, vars: &[Var]) -> Result<()> {
    let sums = vars
        .par_iter()
        .map(|var| {
            let t = var.as_tensor();
            Ok(match (acc.get(t), other.get(t)) {
                (Some(a), Some(b)) => Some((a + b)?),
                (None, Some(b)) => Some(b.clone()),
                _ => None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (var, sum) in vars.iter().zip(sums) {
        if let Some(sum) = sum {
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}

/// Loss and gradients of one batch: shard `i` runs through `replicas[i]`, all in parallel;
/// each shard's label-smoothed loss sum is divided by `norm_tokens` (the target tokens of the
/// whole update), so the summed gradient is the whole batch's. Returns the gradients of
/// `vars` and the loss (a scalar tensor, on the device). `replicas[0]` is the model whose
/// dropout stream checkpoints save; the others share its parameters and are reseeded from it
/// here.
pub fn batch_gradients(
    replicas: &[Model],
    shards: &[ShardInput],
    norm_tokens: usize,
    label_smoothing: f64,
    vars: &[Var],
) -> Result<(GradStore, Tensor)> {
    if shards.is_empty() || shards.len() > replicas.len() {
        candle_core::bail!(
            "training step: {} shards for {} model replicas",
            shards.len(),
            replicas.len()
        )
    }
    let main = replicas[0].dropout_rng();
    for replica in &replicas[1..shards.len()] {
        replica.dropout_rng().reseed_from(main)?;
    }
    let scope = ops::Scope::current();
    let results = shards
        .par_iter()
        .zip(replicas)
        .map(|(shard, model)| {
            let run = || shard_gradients(model, shard, norm_tokens, label_smoothing);
            // With fewer shards than threads the products still need splitting to use them all.
            scope.enter(|| {
                if shards.len() > 1 && shards.len() >= rayon::current_num_threads() {
                    ops::with_whole_products(run)
                } else {
                    run()
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut results = results.into_iter();
    let Some((mut grads, mut loss)) = results.next() else {
        candle_core::bail!("training step: no shard ran")
    };
    for (g, l) in results {
        add_grads(&mut grads, &g, vars)?;
        loss = (loss + l)?;
    }
    Ok((grads, loss))
}

/// Teacher-forced label-smoothed loss sums of `input` (`train`: with dropout).
pub fn loss_sums(
    model: &Model,
    input: &ShardInput,
    train: bool,
    label_smoothing: f64,
) -> Result<LossSums> {
    let memory = model.encode(&input.src, &input.src_mask, train)?;
    let hidden = model.decoder_states(&memory, &input.tgt_in, train)?;
    projected_label_smoothed_cross_entropy(
        &hidden,
        &model.output_layer(),
        &input.tgt_out,
        &input.tgt_mask,
        label_smoothing,
    )
}

/// One shard's forward, loss (divided by `norm_tokens`) and backward.
fn shard_gradients(
    model: &Model,
    shard: &ShardInput,
    norm_tokens: usize,
    label_smoothing: f64,
) -> Result<(GradStore, Tensor)> {
    let sums = loss_sums(model, shard, true, label_smoothing)?;
    let loss = (sums.smoothed / norm_tokens as f64)?;
    let grads = loss.backward()?;
    Ok((grads, loss.detach()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use wick_data::tokenizer::SPECIALS;
    use wick_data::{Batch, Example};
    use wick_model::{DropoutRng, ModelConfig, ParamStore, VocabSizes};

    fn tiny_replicas(store: &ParamStore, dropout: f32, n: usize) -> Result<Vec<Model>> {
        let cfg = ModelConfig::parse(&format!(
            "d_model = 16\nn_heads = 2\nencoder_layers = 1\ndecoder_layers = 2\nd_ff = 32\n\
             dropout = {dropout}\nattention_dropout = {dropout}\nactivation_dropout = {dropout}\n\
             norm = \"pre\"\ntie_embeddings = \"all\"\nmax_positions = 32"
        ))
        .map_err(candle_core::Error::wrap)?;
        let vocab = VocabSizes { src: 30, tgt: 30 };
        (0..n)
            .map(|i| {
                let rng = DropoutRng::new(7 + i as u64);
                cfg.build(vocab, rng, store.var_builder(DType::F32, &Device::Cpu))
            })
            .collect()
    }

    /// Five sentence pairs of different lengths (so shards pad differently from the batch).
    fn examples() -> Vec<Example> {
        (0..5)
            .map(|i| Example {
                id: i,
                src: (0..2 + i)
                    .map(|j| 4 + ((i * 7 + j * 3) % 26) as u32)
                    .collect(),
                tgt: (0..1 + (i * 2) % 5)
                    .map(|j| 4 + ((i * 5 + j) % 26) as u32)
                    .collect(),
            })
            .collect()
    }

    fn shard_inputs(examples: &[Example], ranges: &[Range<usize>]) -> Result<Vec<ShardInput>> {
        ranges
            .iter()
            .map(|r| {
                let ex: Vec<&Example> = examples[r.clone()].iter().collect();
                Ok(ShardInput::from(&Batch::new(&ex, SPECIALS, &Device::Cpu)?))
            })
            .collect()
    }

    fn flat(grads: &GradStore, vars: &[Var]) -> Result<Vec<Vec<f32>>> {
        vars.iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()?
                    .to_vec1::<f32>()
            })
            .collect()
    }

    #[test]
    fn shards_sum_to_the_whole_batch() -> Result<()> {
        // Without dropout the two shards' summed gradient is the whole batch's (each shard
        // padded to its own longest sentence), up to the order of float sums.
        let store = ParamStore::new(3);
        let models = tiny_replicas(&store, 0.0, 2)?;
        let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
        let ex = examples();
        let tokens: usize = ex.iter().map(Example::tgt_len).sum();
        let whole = shard_inputs(&ex, &[Range { start: 0, end: 5 }])?;
        let (gw, lw) = batch_gradients(&models, &whole, tokens, 0.1, &vars)?;
        let lw = lw.to_scalar::<f32>()? as f64;
        let ranges = shard_ranges(&ex.iter().map(Example::tgt_len).collect::<Vec<_>>(), 2);
        assert_eq!(ranges.len(), 2);
        let (gs, ls) = batch_gradients(&models, &shard_inputs(&ex, &ranges)?, tokens, 0.1, &vars)?;
        let ls = ls.to_scalar::<f32>()? as f64;
        assert!((lw - ls).abs() < 1e-5 * lw.abs(), "loss {lw} against {ls}");
        for (a, b) in flat(&gw, &vars)?.iter().zip(flat(&gs, &vars)?) {
            let top = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff < 1e-4 * top,
                "gradient differs by {diff} (largest {top})"
            );
        }
        Ok(())
    }

    #[test]
    fn sharded_step_depends_on_the_model_stream_only() -> Result<()> {
        // With dropout on, every shard draws from its own stream. The step is a function of
        // the first model's stream alone (the one checkpoints save): the same gradients, loss
        // and next stream state with one thread or two, and again after restoring that stream
        // (the other replica's stream has moved on by then, so it must be reseeded).
        type Outcome = (Vec<Vec<f32>>, f64, u64);
        let run = |threads: usize, p: f32| -> Result<(Outcome, Outcome)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(candle_core::Error::wrap)?;
            pool.install(|| {
                let store = ParamStore::new(3);
                let models = tiny_replicas(&store, p, 2)?;
                let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
                let inputs = shard_inputs(&examples(), &[0..2, 2..5])?;
                let saved = models[0].dropout_rng().state()?;
                let step = || -> Result<Outcome> {
                    let (g, loss) = batch_gradients(&models, &inputs, 20, 0.1, &vars)?;
                    let loss = loss.to_scalar::<f32>()? as f64;
                    use rand::Rng;
                    let next = models[0].dropout_rng().state()?.random::<u64>();
                    Ok((flat(&g, &vars)?, loss, next))
                };
                let first = step()?;
                models[0].dropout_rng().restore(saved)?;
                Ok((first, step()?))
            })
        };
        let (one, again) = run(1, 0.3)?;
        let (two, _) = run(2, 0.3)?;
        assert_eq!(one, two, "thread count");
        assert_eq!(one, again, "restored stream");
        // Dropout was on: without it the gradients differ.
        assert_ne!(one.0, run(2, 0.0)?.0.0);
        Ok(())
    }

    #[test]
    fn shards_balance_weight_and_cover_every_item() {
        assert_eq!(shard_ranges(&[5, 5, 5, 5], 2), vec![0..2, 2..4]);
        assert_eq!(shard_ranges(&[9, 1, 1, 1], 2), vec![0..1, 1..4]);
        assert_eq!(shard_ranges(&[1, 1, 1, 9], 2), vec![0..3, 3..4]);
        assert_eq!(shard_ranges(&[3, 4, 5], 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(shard_ranges(&[7], 2), vec![0..1]);
        assert_eq!(shard_ranges(&[0, 0], 2), vec![0..1, 1..2]);
        assert_eq!(shard_ranges(&[], 2), vec![0..0]);
        for n in 1..12 {
            let w: Vec<usize> = (0..n).map(|i| 1 + (i * 7) % 5).collect();
            let r = shard_ranges(&w, 2);
            assert_eq!(r.len(), n.min(2));
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, n);
            assert!(r.windows(2).all(|p| p[0].end == p[1].start));
            assert!(r.iter().all(|r| !r.is_empty()));
            // The cut is the one closest to half the weight.
            let total: usize = w.iter().sum();
            let best = (1..n.max(2))
                .map(|c| (2 * w[..c].iter().sum::<usize>()).abs_diff(total))
                .min()
                .unwrap_or(0);
            let got = (2 * w[r[0].clone()].iter().sum::<usize>()).abs_diff(total);
            assert!(n < 2 || got == best, "{w:?}: {r:?}");
        }
    }
}
