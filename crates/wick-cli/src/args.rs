//! The `wick` command line's flags. The commands (`crate::commands`) turn them into the typed
//! requests of `wick-train`; no library code sees clap types.

// The doc comments below are clap's help text, written for the terminal (`[default: …]`,
// `<name>`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use wick_metrics::BleuTokenizer;
use wick_train::WeightFormat;
use wick_train::Which;
use wick_train::bench::Preset;
use wick_train::config::Config;
use wick_train::export::{ExportFormat, Quantization};
use wick_train::prepare::Split;

/// A flag whose values are a library type's names: the names listed in `--help`, the value
/// parsed by the type's `FromStr`.
fn one_of<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

fn split_parser() -> impl TypedValueParser<Value = Split> {
    one_of(&["train", "dev", "test"])
}

fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    one_of(&["tiny", "small", "base", "rnn", "conv"])
}

fn format_parser() -> impl TypedValueParser<Value = ExportFormat> {
    one_of(&["ctranslate2", "transformers"])
}

fn quantization_parser() -> impl TypedValueParser<Value = Quantization> {
    one_of(&[
        "int8",
        "int8_float32",
        "int8_float16",
        "int8_bfloat16",
        "int16",
        "float16",
        "bfloat16",
        "float32",
    ])
}

fn weights_parser() -> impl TypedValueParser<Value = WeightFormat> {
    one_of(&["int8"])
}

fn tokenizer_parser() -> impl TypedValueParser<Value = BleuTokenizer> {
    one_of(&["13a", "intl", "char", "none"])
}

/// wick: train, evaluate and use small attention-based translation models.
#[derive(Debug, Parser)]
#[command(
    name = "wick",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = crate::START_HERE
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model; writes a run directory with config, tokenizer, checkpoints and metrics.
    #[command(
        after_help = "Examples:\n  wick train                                   the quick start: English→French, 5 minutes\n  wick train --config configs/reverse.toml     the reverse sanity task\n  wick train --config configs/toy.toml --set train.max_minutes=1\n  wick train --resume runs/toy --set train.max_minutes=10"
    )]
    Train(TrainArgs),
    /// Translate a test split (or files) with a trained run and report BLEU and chrF.
    #[command(
        after_help = "Examples:\n  wick evaluate --run runs/toy\n  wick evaluate --run runs/toy --beam 5 --json\n  wick evaluate --run runs/toy --src test.en --ref test.fr"
    )]
    Evaluate(EvaluateArgs),
    /// Translate sentences given as arguments, or stdin line by line.
    #[command(
        after_help = "Examples:\n  wick translate --run runs/toy \"How are you?\"\n  wick translate --run runs/toy --beam 5 < input.txt > output.txt\n  wick translate --run runs/toy --attention attention.svg \"I like tea.\""
    )]
    Translate(TranslateArgs),
    /// Score hypothesis files against references, like the sacrebleu command.
    #[command(
        after_help = "Example:\n  wick score --ref test.fr --hyp runs/toy/hyp.test.best.txt --metrics bleu,chrf"
    )]
    Score(ScoreArgs),
    /// Average the last (or best) K validation checkpoints of a run into a new checkpoint;
    /// evaluate it with `wick evaluate --checkpoint avg-last-K.safetensors`.
    #[command(
        after_help = "Example:\n  wick average --run runs/toy --last 3 && wick evaluate --run runs/toy --checkpoint avg-last-3.safetensors"
    )]
    Average(AverageArgs),
    /// Write a run's report: report.html (curves, test scores, attention of a few test
    /// sentences, data, config, provenance) and curves.svg; works while the run trains.
    #[command(
        after_help = "Examples:\n  wick report --run runs/toy\n  wick report --run runs/toy --output /tmp/toy.html --samples 8"
    )]
    Report(ReportArgs),
    /// Write a trained run as a model directory another engine serves: CTranslate2
    /// (model.bin, config.json, vocabularies, the tokenizer, a README with the Python that
    /// serves it) or Hugging Face transformers (a MarianMTModel). Transformer runs only.
    #[command(
        after_help = "Examples:\n  wick export --run runs/toy --format ctranslate2 runs/toy-ct2\n  wick export --run runs/toy --format ctranslate2 --quantization int8 runs/toy-ct2-int8\n  wick export --run runs/toy --format transformers runs/toy-hf"
    )]
    Export(ExportArgs),
    /// Measure speed.
    #[command(
        subcommand,
        after_help = "Examples:\n  wick bench train --preset small\n  wick bench decode --run runs/toy --beam 5"
    )]
    Bench(BenchCommand),
    /// Inspect corpora.
    #[command(
        subcommand,
        after_help = "Examples:\n  wick data check --config configs/toy.toml\n  wick data fetch hf://datasets/bentrevett/multi30k"
    )]
    Data(DataCommand),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Report, without training, everything wrong or suspicious in a config's corpora (or in
    /// given files): pair counts, malformed lines (invalid UTF-8, wrong column count, empty
    /// sides, control characters) with line numbers, over-long pairs, duplicate pairs,
    /// untranslated pairs, and dev/test sources that also occur in train. Exits non-zero
    /// only for problems that would stop `wick train`.
    #[command(
        after_help = "Examples:\n  wick data check --config configs/toy.toml\n  wick data check --tsv corpus.tsv --json"
    )]
    Check(DataCheckArgs),
    /// Download files from the Hugging Face Hub into the standard hub cache and print where
    /// they are: `hf://datasets/OWNER/NAME/FILE` (or a whole repository,
    /// `hf://datasets/OWNER/NAME`), `hf://OWNER/NAME/FILE` for model repositories, or every
    /// hf:// path a config names. Honours HF_HOME / HF_HUB_CACHE (cache), HF_ENDPOINT (server)
    /// and HF_HUB_OFFLINE=1 (cache only). Files are checked against the hub's hashes.
    #[command(
        after_help = "Examples:\n  wick data fetch hf://datasets/bentrevett/multi30k/train.jsonl\n  wick data fetch --config configs/multi30k-de-en.toml"
    )]
    Fetch(DataFetchArgs),
}

#[derive(Debug, Args)]
pub struct DataFetchArgs {
    /// hf:// paths of files or repositories, e.g. hf://datasets/bentrevett/multi30k.
    #[arg(value_name = "HF_PATH", required_unless_present = "config")]
    pub paths: Vec<String>,
    /// Fetch every hf:// path of this config (data.train/dev/test, data.tokenizer).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Use only the cache, as HF_HUB_OFFLINE=1 does.
    #[arg(long)]
    pub offline: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DataCheckArgs {
    /// Config whose data.train/dev/test to check [default: the embedded configs/toy.toml].
    #[arg(long, short, conflicts_with_all = ["src", "tsv"])]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set data.max_len=50`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Check an aligned source file (with --tgt) instead of a config.
    #[arg(long, requires = "tgt")]
    pub src: Option<PathBuf>,
    #[arg(long, requires = "src")]
    pub tgt: Option<PathBuf>,
    /// Check a `source<TAB>target` file instead of a config.
    #[arg(long, conflicts_with = "src")]
    pub tsv: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML config; without it, the embedded default (`configs/toy.toml`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.max_steps=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory [default: runs/<config name>, or runs/<name>-2, … if taken].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue this run directory from its last checkpoint, exactly where it stopped. With
    /// `--set train.max_steps=…` (or max_epochs, max_minutes) a finished run trains on;
    /// `[model]` and `[data]` cannot change.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "run_dir", "seed"])]
    pub resume: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Shorthand for `--set train.seed=N`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Test sentences to show translated at the end.
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A run directory written by `wick train`.
    #[arg(long)]
    pub run: PathBuf,
    /// best, last, or a checkpoint file: a name in the run's checkpoints/ (e.g.
    /// step-1200.safetensors, avg-last-5.safetensors from `wick average`) or any path.
    #[arg(long, default_value = "best", value_name = "best|last|FILE")]
    pub checkpoint: Which,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Decoding overrides; unset flags keep the run's `[decode]` values.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Beam size (1: greedy).
    #[arg(long)]
    pub beam: Option<usize>,
    /// α of the GNMT length penalty for beam search.
    #[arg(long)]
    pub length_penalty: Option<f64>,
    /// Output length limit a · source tokens + b: the a.
    #[arg(long)]
    pub max_len_a: Option<f64>,
    /// Output length limit a · source tokens + b: the b.
    #[arg(long)]
    pub max_len_b: Option<usize>,
    /// Source tokens × beam per decoding batch.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Keep the N best beam hypotheses (N ≤ --beam). `translate` prints them as
    /// `index<TAB>score<TAB>translation` lines; `evaluate` scores the best and writes all N
    /// to `<hyp file>.nbest`.
    #[arg(long, value_name = "N")]
    pub n_best: Option<usize>,
    /// Decode with int8 weights: every linear layer and the output projection quantized per
    /// output row, each product's inputs per row, summed in integers (VNNI where the CPU
    /// has it). CPU only.
    #[arg(long, value_parser = weights_parser())]
    pub quantize: Option<WeightFormat>,
}

impl DecodeArgs {
    /// The weights to decode with.
    pub fn weights(&self) -> WeightFormat {
        self.quantize.unwrap_or_default()
    }

    /// Applies the flags to a run's config and re-validates it.
    pub fn apply(&self, cfg: &mut Config) -> Result<()> {
        let d = &mut cfg.decode;
        if let Some(v) = self.beam {
            d.beam = v;
        }
        if let Some(v) = self.length_penalty {
            d.length_penalty = v;
        }
        if let Some(v) = self.max_len_a {
            d.max_len_a = v;
        }
        if let Some(v) = self.max_len_b {
            d.max_len_b = v;
        }
        if let Some(v) = self.batch_tokens {
            d.batch_tokens = v;
        }
        if let Some(v) = self.n_best {
            d.n_best = v;
        }
        Ok(cfg.validate()?)
    }
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Split of the run's config to translate.
    #[arg(long, default_value = "test", value_parser = split_parser())]
    pub split: Split,
    /// Source file to translate instead of a split (with --ref).
    #[arg(long, requires = "reference")]
    pub src: Option<PathBuf>,
    /// Reference file for --src.
    #[arg(long = "ref", requires = "src")]
    pub reference: Option<PathBuf>,
    /// Where to write the translations [default: <run>/hyp.<split>.<checkpoint>.txt].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Draw the cross-attention of the translation to this .svg or .png: target tokens
    /// down, source tokens across, one panel per decoder layer averaged over its heads
    /// (needs exactly one sentence).
    #[arg(long, value_name = "OUT.svg|OUT.png")]
    pub attention: Option<PathBuf>,
    /// With --attention: one panel per head of decoder layer N (1-based) instead.
    #[arg(long, value_name = "N", requires = "attention")]
    pub heads: Option<usize>,
    /// Write the raw cross-attention weights as JSON: `layers[layer][head][target][source]`
    /// with `src_tokens` and `tgt_tokens` (needs exactly one sentence).
    #[arg(long, value_name = "OUT.json")]
    pub attention_json: Option<PathBuf>,
    /// Sentences to translate; without any, stdin is read line by line.
    pub text: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A run directory written by `wick train` (finished or still training).
    #[arg(long)]
    pub run: PathBuf,
    /// Where to write the HTML [default: <run>/report.html]; curves.svg goes beside it.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Test sentences shown translated with their attention maps.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// cpu, cuda, cuda:N or metal (for translating the samples).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["last", "best"])))]
pub struct AverageArgs {
    /// A run directory written by `wick train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Average the K most recent validation checkpoints.
    #[arg(long, value_name = "K")]
    pub last: Option<usize>,
    /// Average the K best validation checkpoints (by the run's train.best_metric).
    #[arg(long, value_name = "K")]
    pub best: Option<usize>,
    /// Output file [default: <run>/checkpoints/avg-last-K.safetensors or avg-best-K].
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory written by `wick train`.
    #[arg(long)]
    pub run: PathBuf,
    /// best, last, or a checkpoint file: a name in the run's checkpoints/ (e.g.
    /// avg-last-5.safetensors from `wick average`) or any path.
    #[arg(long, default_value = "best", value_name = "best|last|FILE")]
    pub checkpoint: Which,
    /// The engine to write for.
    #[arg(long, value_parser = format_parser())]
    pub format: ExportFormat,
    /// Weight type: int8 (rows of int8 with one scale each), int8_float16, float16, … as
    /// CTranslate2 names them [default: float32, as trained].
    #[arg(long, value_parser = quantization_parser())]
    pub quantization: Option<Quantization>,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    pub force: bool,
    /// The directory to write (it must not exist, unless --force).
    #[arg(value_name = "OUT_DIR")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reference file (repeat for multiple references).
    #[arg(long = "ref", required = true)]
    pub refs: Vec<PathBuf>,
    /// Hypothesis file, one segment per line.
    #[arg(long)]
    pub hyp: PathBuf,
    /// Comma-separated: bleu, chrf, chrf++.
    #[arg(long, default_value = "bleu,chrf", value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// BLEU tokenizer.
    #[arg(long, default_value = "13a", value_parser = tokenizer_parser())]
    pub tokenize: BleuTokenizer,
    /// Lowercase hypotheses and references first.
    #[arg(long)]
    pub lowercase: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time full training steps (forward, loss, backward, clip, AdamW) on random batches.
    #[command(
        after_help = "Examples:\n  wick bench train --preset small --json\n  wick bench train --config configs/toy.toml --vocab 3000"
    )]
    Train(BenchTrainArgs),
    /// Time decoding of a run's test split (greedy, greedy without the key/value cache, beam
    /// search) or of a preset model on a fixed shape; sentences/s and output tokens/s.
    #[command(
        after_help = "Examples:\n  wick bench decode --run runs/toy --beam 5\n  wick bench decode --preset base --beam 1 --repeats 3"
    )]
    Decode(BenchDecodeArgs),
    /// Time, one by one, the matrix products of a preset's training step (its linear layers
    /// and output projection, forward and backward) with the matmul wick uses, and add them up
    /// per step: how much of a step the matmul engine alone costs.
    #[command(after_help = "Example:\n  wick bench matmul --preset small")]
    Matmul(BenchMatmulArgs),
}

/// The synthetic batch shape of `bench train` and `bench matmul`.
#[derive(Debug, Args)]
pub struct BatchShapeArgs {
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 24)]
    pub src_len: usize,
    #[arg(long, default_value_t = 24)]
    pub tgt_len: usize,
}

impl BatchShapeArgs {
    /// `(batch_size, src_len, tgt_len)`, all positive.
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        if self.batch_size == 0 || self.src_len == 0 || self.tgt_len == 0 {
            bail!("--batch-size, --src-len and --tgt-len must be positive")
        }
        Ok((self.batch_size, self.src_len, self.tgt_len))
    }
}

#[derive(Debug, Args)]
pub struct BenchMatmulArgs {
    /// Model size.
    #[arg(long, default_value = "tiny", value_parser = preset_parser())]
    pub preset: Preset,
    #[command(flatten)]
    pub shape: BatchShapeArgs,
    /// Timed runs per product (after 2 untimed ones); the median is reported.
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object (the shapes, their times and the per-step totals).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchDecodeArgs {
    /// A run directory written by `wick train`: time decoding of one of its splits.
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub run: Option<PathBuf>,
    /// best, last, or a checkpoint file (with --run).
    #[arg(long, default_value = "best", value_name = "best|last|FILE")]
    pub checkpoint: Which,
    /// Instead of a run: a randomly initialised benchmark model, decoding --batch-size random
    /// sources of --src-len tokens for exactly --steps tokens each (no early stop). Its weights
    /// are laid out for decoding once, before the timed repeats, as `wick translate` does
    /// (timed apart: layout_seconds in the JSON).
    #[arg(long, value_parser = preset_parser())]
    pub preset: Option<Preset>,
    /// Sentences per batch with --preset.
    #[arg(long, default_value_t = 64, requires = "preset")]
    pub batch_size: usize,
    /// Source length with --preset.
    #[arg(long, default_value_t = 24, requires = "preset")]
    pub src_len: usize,
    /// Output tokens per sentence with --preset.
    #[arg(long, default_value_t = 24, requires = "preset")]
    pub steps: usize,
    /// With --preset: write its randomly initialised model as a run directory (config,
    /// checkpoint, a tokenizer of numbered stand-in tokens of the preset's vocabulary size)
    /// instead of timing it, for `wick export`: scripts/bench_vs_ctranslate2.sh times
    /// CTranslate2 on the same model and shapes.
    #[arg(long, requires = "preset", value_name = "DIR")]
    pub write_run: Option<PathBuf>,
    /// Split of the run's config whose sources are decoded.
    #[arg(long, default_value = "test", value_parser = split_parser())]
    pub split: Split,
    /// Decode only the first N sentences.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Beam size of the beam-search timing (1: skip it).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Skip the (slow) greedy decoding without the cache (always skipped with --preset).
    #[arg(long)]
    pub no_uncached: bool,
    /// Timed repeats per mode; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Decode with int8 weights (as `wick translate --quantize int8`).
    #[arg(long, value_parser = weights_parser())]
    pub quantize: Option<WeightFormat>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model size; ignored with --config.
    #[arg(long, default_value = "tiny", value_parser = preset_parser())]
    pub preset: Preset,
    /// Take the [model] section of this config instead of a preset (with --vocab).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Vocabulary size with --config.
    #[arg(long, default_value_t = 4000)]
    pub vocab: usize,
    #[command(flatten)]
    pub shape: BatchShapeArgs,
    /// Timed steps (after 3 untimed warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Slices of sentences the batch runs as, side by side (as `train.shards`); 1 on devices
    /// other than the CPU.
    #[arg(long, default_value_t = wick_train::step::SHARDS)]
    pub shards: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}
