//! `wick bench train`: times full training steps on synthetic batches of a fixed shape.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use wick_model::{
    DropoutRng, Memory, Model, ModelConfig, ParamStore, ProductShape, Seq2Seq, VocabSizes,
};

use crate::optim::AdamW;
use crate::run::memory_mb;

/// Benchmark model sizes. The Transformers are post-norm with sinusoidal positions; every
/// preset ties all embeddings and has dropout 0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Transformer: d_model 128, 4 heads, 2+2 layers, d_ff 512, vocabulary 8000.
    Tiny,
    /// Transformer: d_model 256, 8 heads, 3+3 layers, d_ff 1024, vocabulary 8000.
    Small,
    /// Transformer: d_model 512, 8 heads, 6+6 layers, d_ff 2048, vocabulary 16000.
    Base,
    /// RNN: GRU, Bahdanau attention, embeddings 128, hidden 256 (encoder 2 × 128), 1+1
    /// layers, vocabulary 8000.
    Rnn,
    /// ConvS2S: embeddings 256, 256 channels, 4+3 layers, kernel 3, vocabulary 8000.
    Conv,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::Tiny,
        Preset::Small,
        Preset::Base,
        Preset::Rnn,
        Preset::Conv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Base => "base",
            Preset::Rnn => "rnn",
            Preset::Conv => "conv",
        }
    }

    /// The preset's `[model]` and vocabulary size.
    pub fn config(self) -> (ModelConfig, usize) {
        let (d, h, l, ff, v) = match self {
            Preset::Tiny => (128, 4, 2, 512, 8000),
            Preset::Small => (256, 8, 3, 1024, 8000),
            Preset::Base => (512, 8, 6, 2048, 16000),
            Preset::Rnn => {
                return Self::parse(
                    "arch = \"rnn\"\ncell = \"gru\"\nattention = \"bahdanau\"\n\
                     embedding_dim = 128\nhidden_size = 256\nencoder_layers = 1\n\
                     decoder_layers = 1\ndropout = 0.1\ntie_embeddings = \"all\"",
                    8000,
                );
            }
            Preset::Conv => {
                return Self::parse(
                    "arch = \"conv\"\nembedding_dim = 256\nhidden_size = 256\n\
                     encoder_layers = 4\ndecoder_layers = 3\nkernel_size = 3\ndropout = 0.1\n\
                     max_positions = 256\ntie_embeddings = \"all\"",
                    8000,
                );
            }
        };
        let text = format!(
            "arch = \"transformer\"\nd_model = {d}\nn_heads = {h}\nencoder_layers = {l}\n\
             decoder_layers = {l}\nd_ff = {ff}\ndropout = 0.1\nattention_dropout = 0.0\n\
             activation_dropout = 0.0\nnorm = \"post\"\ntie_embeddings = \"all\"\n\
             max_positions = 256\nlayer_norm_eps = 1e-5"
        );
        Self::parse(&text, v)
    }

    fn parse(text: &str, vocab: usize) -> (ModelConfig, usize) {
        // The text is fixed here; a failure is a bug every bench test would catch.
        (ModelConfig::parse(text).unwrap_or_default(), vocab)
    }
}

impl std::str::FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown preset `{s}` (expected tiny, small, base, rnn or conv)")
            })
    }
}

pub struct BenchRequest {
    pub model: ModelConfig,
    pub vocab: usize,
    pub batch_size: usize,
    pub src_len: usize,
    pub tgt_len: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Slices of sentences the batch runs as (`train.shards`).
    pub shards: usize,
    pub device: Device,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub params: usize,
    pub batch_size: usize,
    pub src_len: usize,
    pub tgt_len: usize,
    pub steps: usize,
    pub ms_per_step: f64,
    pub ms_per_step_min: f64,
    pub ms_per_step_max: f64,
    /// Medians of the step's parts: forward, loss and backward of the shards (side by side,
    /// so not separable) with the gradients summed; clipping and AdamW.
    pub gradients_ms: f64,
    pub update_ms: f64,
    /// Slices of sentences the batch ran as (`wick_train::step`).
    pub shards: usize,
    pub tgt_tokens_per_s: f64,
    /// Matmul FLOPs of forward + backward, per second (0 for architectures that do not
    /// count them).
    pub gflops: f64,
    pub peak_rss_mb: Option<f64>,
    /// Peak RSS minus the RSS before the model was built.
    pub working_memory_mb: Option<f64>,
}

/// A seeded, randomly initialised model of `cfg` with one vocabulary of `vocab` for both sides.
fn random_model(cfg: &ModelConfig, vocab: usize, device: &Device) -> Result<(ParamStore, Model)> {
    let store = ParamStore::new(1);
    let vocab = VocabSizes {
        src: vocab,
        tgt: vocab,
    };
    let model = cfg.build(
        vocab,
        DropoutRng::new(2),
        store.var_builder(DType::F32, device),
    )?;
    Ok((store, model))
}

/// Writes the randomly initialised model of a preset (`cfg`, one vocabulary of `vocab`) as a
/// run directory `dir`, which must not exist yet: `config.toml`, `checkpoints/best.safetensors`
/// and a `tokenizer.json` of `vocab` numbered stand-in tokens
/// ([`wick_data::SubwordTokenizer::numbered`]). The weights are the ones `bench decode
/// --preset` times (same seed). What it is for: `wick export` of a preset, so that another
/// engine can be timed on the same model and shapes (`scripts/bench_vs_ctranslate2.sh`); its
/// `[data]` section is a stand-in, and it translates no text.
pub fn write_preset_run(name: &str, cfg: &ModelConfig, vocab: usize, dir: &Path) -> Result<()> {
    if dir.exists() {
        anyhow::bail!(
            "{} already exists (--write-run needs a new directory)",
            dir.display()
        )
    }
    let (store, _model) = random_model(cfg, vocab, &Device::Cpu)?;
    let tokenizer = wick_data::SubwordTokenizer::numbered(vocab)?;
    let config = crate::Config {
        data: crate::config::DataConfig {
            synthetic: Some(wick_data::synthetic::SyntheticSpec {
                task: wick_data::synthetic::Task::Copy,
                n_symbols: 26,
                min_len: 1,
                max_len: 24,
                n_train: 1,
                n_dev: 1,
                n_test: 1,
            }),
            vocab_size: vocab,
            joint_vocab: true,
            ..Default::default()
        },
        model: cfg.clone(),
        ..Default::default()
    };
    config.validate()?;
    let header = format!(
        "# The `{name}` preset of `wick bench decode`, randomly initialised and written by\n\
         # `--write-run` for export and fixed-shape timings. [data] is a stand-in: this model\n\
         # has never seen text.\n\n"
    );
    let meta = std::collections::HashMap::from([
        ("preset".to_string(), name.to_string()),
        (
            "wick_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    // All files or none: a run directory that lacks its checkpoint would only fail later.
    let files = [
        (
            "config.toml".to_string(),
            (header + &config.to_toml()).into_bytes(),
        ),
        (
            "tokenizer.json".to_string(),
            tokenizer.to_json()?.into_bytes(),
        ),
        (
            "checkpoints/best.safetensors".to_string(),
            crate::checkpoint::to_bytes(&store.tensors(), meta)?,
        ),
    ];
    crate::export::write_dir_atomic(dir, &files, false)
}

/// Seeded random token ids above the special tokens.
struct RandomIds {
    rng: ChaCha8Rng,
    vocab: u32,
}

impl RandomIds {
    fn new(vocab: usize) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(3),
            vocab: vocab as u32,
        }
    }

    /// `(rows, cols)` u32.
    fn tensor(&mut self, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
        let ids = (0..rows * cols)
            .map(|_| self.rng.random_range(4..self.vocab))
            .collect::<Vec<u32>>();
        Ok(Tensor::from_vec(ids, (rows, cols), device)?)
    }
}

pub fn bench_train(req: BenchRequest) -> Result<BenchReport> {
    use crate::step::{ShardInput, batch_gradients, replicas, shard_ranges};
    let rss_before = memory_mb().1;
    let (store, model) = random_model(&req.model, req.vocab, &req.device)?;
    // The trainer's step: the batch in shards of sentences, one model replica each.
    let replicas = replicas(&model, &req.model, &store, &req.device, req.shards)?;
    let vars: Vec<_> = store.vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(store.vars(), 0.9, 0.98, 1e-9, 0.0)?;
    let mut ids = RandomIds::new(req.vocab);
    let (b, s, t) = (req.batch_size, req.src_len, req.tgt_len);
    let src = ids.tensor(b, s, &req.device)?;
    let tgt_in = ids.tensor(b, t, &req.device)?;
    let tgt_out = ids.tensor(b, t, &req.device)?;
    let src_mask = Tensor::ones((b, s), DType::F32, &req.device)?;
    let tgt_mask = Tensor::ones((b, t), DType::F32, &req.device)?;
    let inputs = shard_ranges(&vec![t; b], replicas.len())
        .into_iter()
        .map(|r| {
            let rows = |x: &Tensor| x.narrow(0, r.start, r.len());
            Ok(ShardInput {
                src: rows(&src)?,
                src_mask: rows(&src_mask)?,
                tgt_in: rows(&tgt_in)?,
                tgt_out: rows(&tgt_out)?,
                tgt_mask: rows(&tgt_mask)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut times = Vec::new();
    let (mut fwd_bwd, mut upd) = (Vec::new(), Vec::new());
    for i in 0..req.warmup + req.steps {
        let start = Instant::now();
        let (grads, _loss) = batch_gradients(&replicas, &inputs, b * t, 0.1, &vars)?;
        let backward_done = Instant::now();
        let norm = opt.grad_norm(&grads)?;
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        opt.step(&grads, 1e-4, scale)?;
        // Read one parameter value so that every device has finished the update before the
        // clock stops.
        vars[0]
            .as_tensor()
            .flatten_all()?
            .get(0)?
            .to_scalar::<f32>()?;
        if i >= req.warmup {
            let end = Instant::now();
            times.push((end - start).as_secs_f64());
            fwd_bwd.push((backward_done - start).as_secs_f64());
            upd.push((end - backward_done).as_secs_f64());
        }
    }
    let median_ms = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let vocab = VocabSizes {
        src: req.vocab,
        tgt: req.vocab,
    };
    let cost = req.model.step_cost(vocab, b, s, t);
    let flops = 3.0 * cost.map_or(0.0, |c| c.forward_flops);
    let (peak, _) = memory_mb();
    Ok(BenchReport {
        params: store.n_params(),
        batch_size: b,
        src_len: s,
        tgt_len: t,
        steps: req.steps,
        ms_per_step: median * 1e3,
        ms_per_step_min: times[0] * 1e3,
        ms_per_step_max: times[times.len() - 1] * 1e3,
        gradients_ms: median_ms(&mut fwd_bwd),
        update_ms: median_ms(&mut upd),
        shards: inputs.len(),
        tgt_tokens_per_s: (b * t) as f64 / median,
        gflops: flops / median / 1e9,
        peak_rss_mb: peak,
        working_memory_mb: peak.zip(rss_before).map(|(p, r)| p - r),
    })
}

/// One decoding mode's speed in `wick bench decode`.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeTiming {
    /// `greedy`, `greedy-uncached` or `beamK`.
    pub mode: String,
    pub sentences: usize,
    /// Output subword tokens (without `</s>`).
    pub output_tokens: usize,
    /// Best of the repeats.
    pub seconds: f64,
    pub sentences_per_s: f64,
    pub tokens_per_s: f64,
    /// The time taken, once per model and before the timed repeats, to lay the model's
    /// weights out for decoding ([`Seq2Seq::for_decoding`]; with int8 weights, to quantize
    /// them), not part of `seconds`: a `Translator` pays it once, `wick translate` once per
    /// call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout_seconds: Option<f64>,
    /// Peak resident memory of the process while this mode ran (its repeats included), in
    /// MB: the model, the tokenizers and the decoding state; `None` where the system cannot
    /// reset the peak between modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
}

pub struct DecodeBenchRequest<'a> {
    pub run: &'a crate::run::Run,
    pub which: crate::run::Which,
    pub sources: Vec<String>,
    pub beam: usize,
    /// Also time greedy decoding without the key/value cache.
    pub uncached: bool,
    pub repeats: usize,
    pub device: &'a Device,
    /// f32 weights, or int8 (`--quantize int8`).
    pub weights: wick_model::ops::WeightFormat,
}

/// Times greedy (cached and, optionally, uncached) and beam decoding of `sources` with the
/// run's `[decode]` settings, batching as `wick translate` does; the best of `repeats`.
pub fn bench_decode(req: DecodeBenchRequest) -> Result<Vec<DecodeTiming>> {
    use crate::translator::{SPECIAL_IDS, decode_batches};
    use wick_model::search::{BeamConfig, beam_search, greedy, greedy_uncached};

    let tok = &req.run.tokenizers;
    let decode = &req.run.config.decode;
    let mut modes = vec!["greedy".to_string()];
    if req.uncached {
        modes.push("greedy-uncached".into());
    }
    if req.beam > 1 {
        modes.push(format!("beam{}", req.beam));
    }
    // Laid out once and timed apart (layout_seconds), as a `Translator` does and as engines
    // that load a model once are measured.
    // The loaded model goes once laid out: the layout holds the weights, as in a `Translator`.
    let (laid_out, layout_seconds) = {
        let model = req.run.load_model(&req.which, req.device)?;
        let start = Instant::now();
        let laid_out = wick_model::ops::with_weight_format(req.weights, || model.for_decoding())?;
        (laid_out, start.elapsed().as_secs_f64())
    };
    let mut out = Vec::new();
    let mut reference: Option<Vec<Vec<u32>>> = None;
    for mode in modes {
        let mut best = f64::INFINITY;
        let mut outputs = Vec::new();
        // Batched as `wick translate --beam B` batches: the budget counts hypotheses.
        let decode = &crate::config::DecodeConfig {
            beam: if mode.starts_with("beam") {
                req.beam
            } else {
                1
            },
            ..decode.clone()
        };
        // Each mode's peak on its own: what the last one freed goes back first.
        wick_kernels::process::release_free_memory();
        let peak_measured = crate::run::reset_peak_memory();
        for _ in 0..req.repeats.max(1) {
            let start = Instant::now();
            let search = |model: &Model, memory: &Memory, max_len: &[usize]| {
                Ok(match mode.as_str() {
                    "greedy" => greedy(model, memory, SPECIAL_IDS, max_len)?,
                    "greedy-uncached" => greedy_uncached(model, memory, SPECIAL_IDS, max_len)?,
                    _ => beam_search(
                        model,
                        memory,
                        SPECIAL_IDS,
                        max_len,
                        BeamConfig {
                            beam: req.beam,
                            length_penalty: decode.length_penalty,
                            n_best: 1,
                        },
                    )?
                    .into_iter()
                    .map(|mut h| h.swap_remove(0).tokens)
                    .collect(),
                })
            };
            outputs = decode_batches(&laid_out, tok, decode, &req.sources, search)?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        // The cache must not change a single output; check it while we have both.
        match (&reference, mode.as_str()) {
            (None, "greedy") => reference = Some(outputs.clone()),
            (Some(r), "greedy-uncached") if *r != outputs => {
                anyhow::bail!("greedy decoding with and without the cache disagree")
            }
            _ => {}
        }
        let tokens: usize = outputs.iter().map(Vec::len).sum();
        out.push(DecodeTiming {
            mode,
            sentences: req.sources.len(),
            output_tokens: tokens,
            seconds: best,
            sentences_per_s: req.sources.len() as f64 / best.max(1e-9),
            tokens_per_s: tokens as f64 / best.max(1e-9),
            layout_seconds: Some(layout_seconds),
            peak_rss_mb: memory_mb().0.filter(|_| peak_measured),
        });
    }
    Ok(out)
}

/// `wick bench decode --preset`: decoding speed of a randomly initialised preset model on a
/// fixed shape, comparable with any other implementation of the same model.
pub struct PresetDecodeRequest {
    pub model: ModelConfig,
    pub vocab: usize,
    pub batch_size: usize,
    pub src_len: usize,
    /// Output tokens per sentence: decoding never stops early.
    pub steps: usize,
    pub beam: usize,
    pub repeats: usize,
    pub device: Device,
    /// f32 weights, or int8 (`--quantize int8`).
    pub weights: wick_model::ops::WeightFormat,
}

/// Times cached greedy decoding (and beam search when `beam > 1`) of `batch_size` random
/// sources for exactly `steps` tokens each, including encoding. `</s>` is set to an id the
/// model cannot produce, so every sentence runs the full length whatever the random weights
/// predict, as a fixed-shape benchmark must.
pub fn bench_decode_preset(req: PresetDecodeRequest) -> Result<Vec<DecodeTiming>> {
    use wick_model::search::{BeamConfig, SpecialIds, beam_search, greedy};

    // Laid out once, like a model loaded for translation (`decode_batches`): frozen, as a
    // loaded checkpoint is; the model and its store go once laid out, as in a `Translator`.
    let (model, layout_seconds) = {
        let (store, _) = random_model(&req.model, req.vocab, &req.device)?;
        let vocab = VocabSizes {
            src: req.vocab,
            tgt: req.vocab,
        };
        let model = crate::run::frozen_model(&req.model, vocab, &store, &req.device)?;
        let start = Instant::now();
        let laid_out = wick_model::ops::with_weight_format(req.weights, || model.for_decoding())?;
        (laid_out, start.elapsed().as_secs_f64())
    };
    let (b, s) = (req.batch_size, req.src_len);
    let src = RandomIds::new(req.vocab).tensor(b, s, &req.device)?;
    let src_mask = Tensor::ones((b, s), DType::F32, &req.device)?;
    let ids = SpecialIds {
        bos: 1,
        eos: req.vocab as u32,
    };
    let max_len = vec![req.steps; b];
    let mut modes = vec!["greedy".to_string()];
    if req.beam > 1 {
        modes.push(format!("beam{}", req.beam));
    }
    let mut out = Vec::new();
    for mode in modes {
        let mut best = f64::INFINITY;
        let mut tokens = 0;
        // Each mode's peak on its own: what the last one freed goes back first.
        wick_kernels::process::release_free_memory();
        let peak_measured = crate::run::reset_peak_memory();
        // One untimed run first: the first pass pays for page faults and thread start-up.
        for i in 0..=req.repeats.max(1) {
            let start = Instant::now();
            let memory = model.encode(&src, &src_mask, false)?;
            let outputs: Vec<Vec<u32>> = if mode == "greedy" {
                greedy(&model, &memory, ids, &max_len)?
            } else {
                let cfg = BeamConfig {
                    beam: req.beam,
                    length_penalty: 0.6,
                    n_best: 1,
                };
                beam_search(&model, &memory, ids, &max_len, cfg)?
                    .into_iter()
                    .map(|mut h| h.swap_remove(0).tokens)
                    .collect()
            };
            let seconds = start.elapsed().as_secs_f64();
            tokens = outputs.iter().map(Vec::len).sum();
            if tokens != b * req.steps {
                anyhow::bail!(
                    "bench decode: {tokens} tokens decoded, expected {} × {}",
                    b,
                    req.steps
                )
            }
            if i > 0 {
                best = best.min(seconds);
            }
        }
        out.push(DecodeTiming {
            mode,
            sentences: b,
            output_tokens: tokens,
            seconds: best,
            sentences_per_s: b as f64 / best.max(1e-9),
            tokens_per_s: tokens as f64 / best.max(1e-9),
            layout_seconds: Some(layout_seconds),
            peak_rss_mb: memory_mb().0.filter(|_| peak_measured),
        });
    }
    Ok(out)
}

/// The median time of one shape in `wick bench matmul`.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulTiming {
    #[serde(flatten)]
    pub shape: ProductShape,
    /// Median milliseconds of one product.
    pub ms: f64,
    pub gflops: f64,
}

/// The products of a training step of `cfg` on a `b × (s + t)` batch, and the FLOPs of its
/// forward pass.
pub fn step_cost(
    cfg: &ModelConfig,
    vocab: usize,
    b: usize,
    s: usize,
    t: usize,
) -> Result<wick_model::StepCost> {
    let vocab = VocabSizes {
        src: vocab,
        tgt: vocab,
    };
    cfg.step_cost(vocab, b, s, t).ok_or_else(|| {
        anyhow::anyhow!(
            "arch = \"{}\" does not list the products of its training step",
            cfg.arch()
        )
    })
}

/// Times each product with the matmul of wick's kernels (`wick_model::ops::matmul`) on random
/// operands, `repeats` times after two warm-up runs, median.
pub fn bench_matmul(
    shapes: &[ProductShape],
    repeats: usize,
    device: &Device,
) -> Result<Vec<MatmulTiming>> {
    let mut timings = Vec::new();
    for shape in shapes {
        let (m, k, n) = (shape.m, shape.k, shape.n);
        let lhs = if shape.lhs_t {
            Tensor::randn(0f32, 1.0, (k, m), device)?.t()?
        } else {
            Tensor::randn(0f32, 1.0, (m, k), device)?
        };
        let rhs = if shape.rhs_t {
            Tensor::randn(0f32, 1.0, (n, k), device)?.t()?
        } else {
            Tensor::randn(0f32, 1.0, (k, n), device)?
        };
        let mut times = Vec::new();
        for i in 0..repeats + 2 {
            let start = Instant::now();
            let product = wick_model::ops::matmul(&lhs, &rhs)?;
            // Reading one value waits for devices that run asynchronously.
            product.get(0)?.get(0)?.to_scalar::<f32>()?;
            if i >= 2 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        timings.push(MatmulTiming {
            shape: shape.clone(),
            ms: median * 1e3,
            gflops: 2.0 * (m * k * n) as f64 / median / 1e9,
        });
    }
    Ok(timings)
}
