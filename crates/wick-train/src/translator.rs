//! Translation with a trained model: [`Translator`], the Rust API behind `wick translate` and
//! `wick evaluate`.
//!
//! Sources are tokenized, sorted by length into token-budget batches, decoded greedily or with
//! beam search, and returned in input order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use wick_data::SourceBatch;
use wick_data::batcher::token_batches;
use wick_data::tokenizer::SPECIALS;
use wick_model::ops::WeightFormat;
use wick_model::search::{BeamConfig, SpecialIds, beam_search, greedy};
use wick_model::{Memory, Model, Seq2Seq, ops};

use crate::attention::{AttentionMap, attention_map};
use crate::config::DecodeConfig;
use crate::run::{Run, Tokenizers, Which};

/// Longest input, in subword tokens with `</s>`, for models without a position table.
const UNBOUNDED_MAX_TOKENS: usize = 1024;

pub(crate) const SPECIAL_IDS: SpecialIds = SpecialIds {
    bos: SPECIALS.bos,
    eos: SPECIALS.eos,
};

/// One hypothesis of an n-best list.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub text: String,
    /// Σ log p of the tokens (and `</s>`) divided by the length penalty.
    pub score: f64,
}

/// A trained model ready to translate: laid out for decoding once, with its tokenizers and
/// decoding settings, and a thread pool of its own.
///
/// `Send + Sync`: a server can share one translator between its threads.
///
/// ```
/// use wick_train::{Config, TrainRequest, Translator, Which, train};
/// # fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let run_dir = dir.path().join("run");
/// // A tiny run of the reverse task (a few updates), then a translator over its best checkpoint.
/// let config = Config::from_toml(
///     r#"
///     [data.synthetic]
///     task = "reverse"
///     n_symbols = 8
///     min_len = 2
///     max_len = 5
///     n_train = 200
///     n_dev = 20
///     n_test = 20
///     [data]
///     vocab_size = 300
///     max_len = 12
///     [model]
///     d_model = 16
///     n_heads = 2
///     d_ff = 32
///     max_positions = 32
///     [train]
///     max_steps = 3
///     max_epochs = 0
///     validate_every = 3
///     "#,
///     "reverse.toml".as_ref(),
///     &[],
/// )?;
/// train(TrainRequest::new(config, &run_dir))?;
/// let translator = Translator::from_run(&run_dir, Which::Best, &candle_core::Device::Cpu)?
///     .with_beam(4)?;
/// let out = translator.translate(&["c a f", "h g e d"])?;
/// assert_eq!(out.len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct Translator {
    /// Laid out for decoding in `weights`.
    model: Model,
    /// Where the weights come from when they are laid out again in another format.
    origin: Origin,
    weights: WeightFormat,
    tokenizers: Tokenizers,
    decode: DecodeConfig,
    /// The pool every call runs in; `None`: the caller's.
    pool: Option<Arc<rayon::ThreadPool>>,
    checkpoint: Option<PathBuf>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("model", &self.model)
            .field("weights", &self.weights)
            .field("decode", &self.decode)
            .field("threads", &self.threads())
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

/// The trained weights behind a [`Translator`], for [`Translator::with_weights`].
enum Origin {
    /// The caller's model: a clone shares its tensors, so keeping it costs nothing.
    Model(Model),
    /// A run's checkpoint, read again when needed, so that a translator of a run holds each
    /// weight once, in its decoding layout. `stamp`: the file's length and modification time
    /// when it was loaded, so that a checkpoint rewritten since (`best` during training) is
    /// refused rather than mixed in.
    Checkpoint {
        dir: PathBuf,
        which: Which,
        device: Device,
        stamp: Stamp,
    },
}

/// A file's length and modification time.
type Stamp = (u64, Option<std::time::SystemTime>);

fn file_stamp(path: &Path) -> Result<Stamp> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((meta.len(), meta.modified().ok()))
}

/// The checkpoint `which` of `run` and its stamp; refused if it was rewritten while it was
/// read.
fn load_stamped(run: &Run, which: &Which, device: &Device) -> Result<(Model, Stamp)> {
    let path = run.checkpoint_path(which);
    let before = file_stamp(&path).ok();
    let model = run.load_model(which, device)?;
    let stamp = file_stamp(&path)?;
    if before.is_some_and(|b| b != stamp) {
        bail!(
            "{}: the checkpoint was rewritten while it was read; try again",
            path.display()
        )
    }
    Ok((model, stamp))
}

/// The number of threads a [`Translator`] decodes with by default: `RAYON_NUM_THREADS` if
/// set, else the machine's physical cores (Candle's count).
pub fn default_threads() -> usize {
    candle_core::utils::get_num_threads()
}

fn build_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    if threads == 0 {
        bail!("a translator needs at least one thread")
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("wick-translate-{i}"))
        .build()
        .context("cannot start the translator's threads")?;
    Ok(Arc::new(pool))
}

impl Translator {
    /// The checkpoint `which` of the run in `dir`, on `device`, with the run's `[decode]`
    /// settings and [`default_threads`] threads.
    pub fn from_run(dir: impl AsRef<Path>, which: Which, device: &Device) -> Result<Self> {
        let run = Run::open(dir.as_ref())?;
        let checkpoint = run.checkpoint_path(&which);
        let (model, stamp) = load_stamped(&run, &which, device)?;
        let mut t = Self::from_model(&model, run.tokenizers, run.config.decode)?
            .with_threads(default_threads())?;
        // The loaded model goes: the layout holds the weights.
        t.origin = Origin::Checkpoint {
            dir: dir.as_ref().to_path_buf(),
            which,
            device: device.clone(),
            stamp,
        };
        drop(model);
        wick_kernels::process::release_free_memory();
        t.checkpoint = Some(checkpoint);
        Ok(t)
    }

    /// A translator over `model` (laid out for decoding here, once), decoding on the caller's
    /// thread pool.
    pub fn from_model(model: &Model, tokenizers: Tokenizers, decode: DecodeConfig) -> Result<Self> {
        decode.validate().map_err(anyhow::Error::msg)?;
        Ok(Self {
            model: model.for_decoding()?,
            origin: Origin::Model(model.clone()),
            weights: WeightFormat::F32,
            tokenizers,
            decode,
            pool: None,
            checkpoint: None,
        })
    }

    /// Decodes with weights in `format`: [`WeightFormat::Int8`] quantizes every linear layer
    /// and the output projection per output row, and the inputs of each product per row
    /// (`wick translate --quantize int8`; CPU only). Embeddings and norms stay f32. A
    /// translator made by [`Self::from_run`] reads its checkpoint again for this, and refuses
    /// if the file has changed since.
    pub fn with_weights(mut self, format: WeightFormat) -> Result<Self> {
        if format != self.weights {
            let source = match &self.origin {
                Origin::Model(model) => model.clone(),
                Origin::Checkpoint {
                    dir,
                    which,
                    device,
                    stamp,
                } => {
                    let run = Run::open(dir)?;
                    let (model, now) = load_stamped(&run, which, device)?;
                    if now != *stamp {
                        bail!(
                            "{}: the checkpoint has changed since the translator loaded it; make a new translator",
                            run.checkpoint_path(which).display()
                        )
                    }
                    model
                }
            };
            self.model = ops::with_weight_format(format, || source.for_decoding())?;
            self.weights = format;
            drop(source);
            wick_kernels::process::release_free_memory();
        }
        Ok(self)
    }

    /// The format of the weights it decodes with.
    pub fn weights(&self) -> WeightFormat {
        self.weights
    }

    /// Decodes on a pool of `threads` threads of its own.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.pool = Some(build_pool(threads)?);
        Ok(self)
    }

    /// Decodes on the thread pool of whoever calls it.
    pub fn on_callers_pool(mut self) -> Self {
        self.pool = None;
        self
    }

    /// Replaces the decoding settings (checked).
    pub fn with_decoding(mut self, decode: DecodeConfig) -> Result<Self> {
        decode.validate().map_err(anyhow::Error::msg)?;
        self.decode = decode;
        Ok(self)
    }

    /// Beam size (1: greedy). `n_best` is lowered to fit.
    pub fn with_beam(self, beam: usize) -> Result<Self> {
        let n_best = self.decode.n_best.min(beam.max(1));
        let decode = DecodeConfig {
            beam,
            n_best,
            ..self.decode.clone()
        };
        self.with_decoding(decode)
    }

    /// α of the GNMT length penalty ranking beam hypotheses.
    pub fn with_length_penalty(self, alpha: f64) -> Result<Self> {
        let decode = DecodeConfig {
            length_penalty: alpha,
            ..self.decode.clone()
        };
        self.with_decoding(decode)
    }

    /// Hypotheses kept per sentence by [`Self::translate_nbest`] (at most the beam).
    pub fn with_n_best(self, n_best: usize) -> Result<Self> {
        let decode = DecodeConfig {
            n_best,
            ..self.decode.clone()
        };
        self.with_decoding(decode)
    }

    /// Output length limit `a · source tokens + b`.
    pub fn with_max_len(self, a: f64, b: usize) -> Result<Self> {
        let decode = DecodeConfig {
            max_len_a: a,
            max_len_b: b,
            ..self.decode.clone()
        };
        self.with_decoding(decode)
    }

    pub fn decoding(&self) -> &DecodeConfig {
        &self.decode
    }

    /// The model, laid out for decoding.
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizers(&self) -> &Tokenizers {
        &self.tokenizers
    }

    /// The checkpoint file, for a translator made by [`Self::from_run`].
    pub fn checkpoint(&self) -> Option<&Path> {
        self.checkpoint.as_deref()
    }

    /// Threads of the translator's own pool (`None`: the caller's pool).
    pub fn threads(&self) -> Option<usize> {
        self.pool.as_ref().map(|p| p.current_num_threads())
    }

    /// Runs `f` in the translator's pool, with the calling thread's kernel settings.
    fn run<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        match &self.pool {
            Some(pool) => {
                let scope = ops::Scope::current();
                pool.install(|| scope.enter(f))
            }
            None => f(),
        }
    }

    /// Subword ids of each translation, in input order: greedy with beam 1, else the best
    /// beam hypothesis.
    pub fn translate_ids<S: AsRef<str> + Sync>(&self, sources: &[S]) -> Result<Vec<Vec<u32>>> {
        self.run(|| {
            decode_batches(
                &self.model,
                &self.tokenizers,
                &self.decode,
                sources,
                |m, mem, l| greedy_or_best(m, mem, l, &self.decode),
            )
        })
    }

    /// Detokenized translations, in input order.
    pub fn translate<S: AsRef<str> + Sync>(&self, sources: &[S]) -> Result<Vec<String>> {
        self.translate_ids(sources)?
            .iter()
            .map(|ids| Ok(self.tokenizers.tgt.decode(ids)?))
            .collect()
    }

    /// The `n_best` best beam hypotheses of each source, best first, in input order. Uses
    /// beam search even with beam 1 (which equals greedy decoding), so every output has a
    /// score.
    pub fn translate_nbest<S: AsRef<str> + Sync>(
        &self,
        sources: &[S],
    ) -> Result<Vec<Vec<Candidate>>> {
        let cfg = BeamConfig {
            beam: self.decode.beam,
            length_penalty: self.decode.length_penalty,
            n_best: self.decode.n_best,
        };
        let hyps = self.run(|| {
            decode_batches(
                &self.model,
                &self.tokenizers,
                &self.decode,
                sources,
                |m, mem, l| Ok(beam_search(m, mem, SPECIAL_IDS, l, cfg)?),
            )
        })?;
        hyps.into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| {
                        Ok(Candidate {
                            text: self.tokenizers.tgt.decode(&h.tokens)?,
                            score: h.score,
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Translates `source` and records what each output token attended to.
    pub fn attention(&self, source: &str) -> Result<AttentionMap> {
        self.run(|| attention_map(&self.model, &self.tokenizers, &self.decode, source))
    }
}

/// Greedy decoding with beam 1, else the best beam hypothesis.
pub(crate) fn greedy_or_best(
    model: &Model,
    memory: &Memory,
    max_len: &[usize],
    decode: &DecodeConfig,
) -> Result<Vec<Vec<u32>>> {
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
}

/// Longest source in subword tokens, `</s>` included, that `model` takes.
pub(crate) fn source_limit(model: &Model) -> usize {
    model.max_positions().unwrap_or(UNBOUNDED_MAX_TOKENS).max(2)
}

/// Encodes `sources`, decodes them in length-sorted token-budget batches with `search` (given
/// the model, the encoded batch and each row's output length limit) and returns the results
/// in input order. `model` should be laid out for decoding ([`Seq2Seq::for_decoding`]).
pub(crate) fn decode_batches<S: AsRef<str>, T: Clone + Default>(
    model: &Model,
    tok: &Tokenizers,
    decode: &DecodeConfig,
    sources: &[S],
    mut search: impl FnMut(&Model, &Memory, &[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let limit = source_limit(model);
    // Inputs far longer than the model takes are cut before tokenization, so a huge line
    // costs no more than a long sentence; they are cut to the limit below anyway.
    let byte_cap = limit * crate::prepare::MAX_BYTES_PER_TOKEN;
    let refs: Vec<&str> = sources
        .iter()
        .map(|s| {
            let s = s.as_ref();
            let mut end = byte_cap.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        })
        .collect();
    let mut src_ids = tok.src.encode_batch(&refs)?;
    // The source plus `</s>` must fit; longer inputs are cut.
    for ids in &mut src_ids {
        ids.truncate(limit - 1);
    }
    let lengths: Vec<(usize, usize)> = src_ids.iter().map(|s| (s.len() + 1, s.len() + 1)).collect();
    // Beam search decodes `beam` rows per sentence: the budget counts hypotheses, so that a
    // batch holds as much decoding state at any beam (peak memory followed the beam).
    let budget = (decode.batch_tokens / decode.beam.max(1)).max(limit);
    let batches = token_batches(&lengths, budget, usize::MAX, None)?;
    let mut out = vec![T::default(); sources.len()];
    for rows in batches {
        let srcs: Vec<&[u32]> = rows.iter().map(|&i| src_ids[i].as_slice()).collect();
        let batch = SourceBatch::new(rows.clone(), &srcs, SPECIALS, model.device())?;
        let memory = model.encode(&batch.src, &batch.src_mask, false)?;
        let max_len: Vec<usize> = srcs
            .iter()
            .map(|s| output_limit(decode, s.len(), limit))
            .collect();
        for (i, result) in rows.into_iter().zip(search(model, &memory, &max_len)?) {
            out[i] = result;
        }
    }
    Ok(out)
}

/// Most output tokens (without `</s>`) for a source of `src_len` tokens:
/// `max_len_a · src_len + max_len_b`, within the model's `limit` (with `<s>`).
pub(crate) fn output_limit(decode: &DecodeConfig, src_len: usize, limit: usize) -> usize {
    ((decode.max_len_a * src_len as f64) as usize + decode.max_len_b).min(limit - 1)
}
