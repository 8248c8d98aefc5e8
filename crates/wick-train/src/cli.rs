//! The `wick` command line. Flags are turned into typed requests here; no other module sees
//! clap types except the small value enums it derives.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::attention::{Panels, attention_map, draw};
use crate::bench::{BenchRequest, Preset, bench_train};
use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::device::parse_device;
use crate::evaluate::{EvalRequest, evaluate};
use crate::metrics::{BleuOptions, BleuTokenizer, ChrfOptions, corpus_bleu, corpus_chrf};
use crate::prepare::{Split, load_split};
use crate::run::{Run, Which, fresh_run_dir};
use crate::trainer::{ResumeRequest, TrainRequest, resume, train};
use crate::translate::{translate, translate_nbest};

/// wick: train, evaluate and use small attention-based translation models.
#[derive(Debug, Parser)]
#[command(name = "wick", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model; writes a run directory with config, tokenizer, checkpoints and metrics.
    Train(TrainArgs),
    /// Translate a test split (or files) with a trained run and report BLEU and chrF.
    Evaluate(EvaluateArgs),
    /// Translate sentences given as arguments, or stdin line by line.
    Translate(TranslateArgs),
    /// Score hypothesis files against references, like the sacrebleu command.
    Score(ScoreArgs),
    /// Average the last (or best) K validation checkpoints of a run into a new checkpoint;
    /// evaluate it with `wick evaluate --checkpoint avg-last-K.safetensors`.
    Average(AverageArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect corpora.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Report, without training, everything wrong or suspicious in a config's corpora (or in
    /// given files): pair counts, malformed lines (invalid UTF-8, wrong column count, empty
    /// sides, control characters) with line numbers, over-long pairs, duplicate pairs,
    /// untranslated pairs, and dev/test sources that also occur in train. Exits non-zero
    /// only for problems that would stop `wick train`.
    Check(DataCheckArgs),
    /// Download files from the Hugging Face Hub into the standard hub cache and print where
    /// they are: `hf://datasets/OWNER/NAME/FILE` (or a whole repository,
    /// `hf://datasets/OWNER/NAME`), `hf://OWNER/NAME/FILE` for model repositories, or every
    /// hf:// path a config names. Honours HF_HOME / HF_HUB_CACHE (cache), HF_ENDPOINT (server)
    /// and HF_HUB_OFFLINE=1 (cache only). Files are checked against the hub's hashes.
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
    /// Source tokens per decoding batch.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Keep the N best beam hypotheses (N ≤ --beam). `translate` prints them as
    /// `index<TAB>score<TAB>translation` lines; `evaluate` scores the best and writes all N
    /// to `<hyp file>.nbest`.
    #[arg(long, value_name = "N")]
    pub n_best: Option<usize>,
}

impl DecodeArgs {
    /// Applies the flags to a run's config and re-validates it.
    fn apply(&self, cfg: &mut Config) -> Result<()> {
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
    #[arg(long, value_enum, default_value = "test")]
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
    #[arg(long, value_enum, default_value = "13a")]
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
    Train(BenchTrainArgs),
    /// Time decoding of a run's test split (greedy, greedy without the key/value cache, beam
    /// search) or of a preset model on a fixed shape; sentences/s and output tokens/s.
    Decode(BenchDecodeArgs),
    /// Time, one by one, the matrix products of a preset's training step (its linear layers
    /// and output projection, forward and backward) with the matmul wick uses, and add them up
    /// per step: how much of a step the matmul engine alone costs.
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
    fn dims(&self) -> Result<(usize, usize, usize)> {
        if self.batch_size == 0 || self.src_len == 0 || self.tgt_len == 0 {
            bail!("--batch-size, --src-len and --tgt-len must be positive")
        }
        Ok((self.batch_size, self.src_len, self.tgt_len))
    }
}

#[derive(Debug, Args)]
pub struct BenchMatmulArgs {
    /// Model size.
    #[arg(long, value_enum, default_value = "tiny")]
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
    #[arg(long, value_enum)]
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
    /// Split of the run's config whose sources are decoded.
    #[arg(long, value_enum, default_value = "test")]
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
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model size; ignored with --config.
    #[arg(long, value_enum, default_value = "tiny")]
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
    #[arg(long, default_value_t = crate::step::SHARDS)]
    pub shards: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Translate(a) => cmd_translate(a),
        Command::Score(a) => cmd_score(a),
        Command::Average(a) => cmd_average(a),
        Command::Bench(BenchCommand::Train(a)) => cmd_bench_train(a),
        Command::Bench(BenchCommand::Decode(a)) => cmd_bench_decode(a),
        Command::Bench(BenchCommand::Matmul(a)) => cmd_bench_matmul(a),
        Command::Data(DataCommand::Check(a)) => cmd_data_check(a),
        Command::Data(DataCommand::Fetch(a)) => cmd_data_fetch(a),
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (summary, config, run_dir) = if let Some(dir) = &a.resume {
        let summary = resume(ResumeRequest {
            run_dir: dir.clone(),
            overrides: a.overrides.clone(),
            device: device.clone(),
        })?;
        (summary, Run::open(dir)?.config, dir.clone())
    } else {
        let mut overrides = a.overrides.clone();
        if let Some(seed) = a.seed {
            overrides.push(format!("train.seed={seed}"));
        }
        let (config, source, name) = match &a.config {
            Some(path) => {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("run")
                    .to_string();
                (
                    Config::load(path, &overrides)?,
                    path.display().to_string(),
                    name,
                )
            }
            None => (
                Config::from_toml(
                    EMBEDDED_DEFAULT,
                    Path::new("<embedded configs/toy.toml>"),
                    &overrides,
                )?,
                "embedded default (configs/toy.toml)".to_string(),
                "toy".to_string(),
            ),
        };
        let run_dir = a
            .run_dir
            .clone()
            .unwrap_or_else(|| fresh_run_dir(Path::new("runs"), &name));
        eprintln!("run directory: {}", run_dir.display());
        let summary = train(TrainRequest {
            config: config.clone(),
            config_source: source,
            run_dir: run_dir.clone(),
            device: device.clone(),
        })?;
        (summary, config, run_dir)
    };
    eprintln!(
        "trained {} steps ({} epochs) in {:.0}s, {:.0} target tokens/s, peak memory {:.0} MB; {}",
        summary.steps,
        summary.epochs,
        summary.seconds,
        summary.tgt_tokens_per_s,
        summary.peak_rss_mb.unwrap_or(0.0),
        summary.stop_reason
    );
    if let Some(b) = summary.best_dev_bleu {
        eprintln!(
            "best checkpoint: step {} (dev BLEU {b:.2})",
            summary.best_step.unwrap_or(0)
        );
    }
    // Final report on the test split with the best checkpoint, as `wick evaluate` would.
    let run = Run::open(&run_dir)?;
    let has_test = config.data.test.is_some() || config.data.synthetic.is_some();
    if has_test {
        let report = evaluate(EvalRequest {
            run: &run,
            which: Which::Best,
            split: Split::Test,
            src_ref: None,
            output: None,
            device: &device,
        })?;
        println!(
            "test ({} sentences, best checkpoint): {}",
            report.n_sentences, report.bleu_detail
        );
        println!(
            "  chrF2 = {:.2}   exact match {:.1}%",
            report.chrf,
            100.0 * report.exact_match
        );
        print_intervals(&report);
        println!("  {}", report.signature);
        println!("  checkpoint: {}", report.checkpoint.display());
        println!(
            "  translations: {} (beam {}, {:.1} sentences/s)",
            report.hyp_file.display(),
            report.beam,
            report.sentences_per_s
        );
        if a.samples > 0 {
            let pairs = load_split(&config, Split::Test)?;
            let hyps = std::fs::read_to_string(&report.hyp_file)?;
            println!("sample translations:");
            for (p, h) in pairs.iter().zip(hyps.lines()).take(a.samples) {
                println!("  src: {}\n  ref: {}\n  hyp: {h}\n", p.src, p.tgt);
            }
        }
    }
    println!("run directory: {}", run_dir.display());
    println!("try: wick translate --run {} \"…\"", run_dir.display());
    Ok(())
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    let device = parse_device(&a.run.device)?;
    let mut run = Run::open(&a.run.run)?;
    a.decode.apply(&mut run.config)?;
    let src_ref = a.src.zip(a.reference);
    let report = evaluate(EvalRequest {
        run: &run,
        which: a.run.checkpoint.clone(),
        split: a.split,
        src_ref,
        output: a.output,
        device: &device,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.bleu_detail);
        println!("chrF2 = {:.2}", report.chrf);
        print_intervals(&report);
        println!("by source length (words):");
        println!(
            "  {:>7}  {:>9}  {:>6}  {:>6}  {:>9}",
            "words", "sentences", "BLEU", "chrF2", "len ratio"
        );
        for b in &report.by_length {
            println!(
                "  {:>7}  {:>9}  {:>6.2}  {:>6.2}  {:>9.3}",
                b.label(),
                b.n_sentences,
                b.bleu,
                b.chrf,
                b.length_ratio
            );
        }
        println!(
            "reference perplexity = {:.2}, token accuracy {:.1}% ({} pairs, forced decoding)",
            report.ref_ppl,
            100.0 * report.ref_token_acc,
            report.ref_pairs_scored
        );
        println!(
            "exact match = {:.2}% of {} sentences",
            100.0 * report.exact_match,
            report.n_sentences
        );
        println!("{}", report.bleu_signature);
        println!("{}", report.chrf_signature);
        println!(
            "translations: {} ({:.1} sentences/s)",
            report.hyp_file.display(),
            report.sentences_per_s
        );
        if let Some(f) = &report.nbest_file {
            println!("n-best lists: {}", f.display());
        }
    }
    Ok(())
}

/// The bootstrap intervals in sacreBLEU's `μ ± x` style plus the percentile bounds.
fn print_intervals(report: &crate::evaluate::EvalReport) {
    for (name, ci) in [("BLEU", &report.bleu_ci), ("chrF2", &report.chrf_ci)] {
        println!(
            "  {name} 95% CI [{:.2}, {:.2}] (μ = {:.2} ± {:.2}, {} bootstrap resamples, seed {})",
            ci.low,
            ci.high,
            ci.mean,
            ci.half_width(),
            ci.resamples,
            ci.seed
        );
    }
}

fn cmd_translate(a: TranslateArgs) -> Result<()> {
    let device = parse_device(&a.run.device)?;
    let mut run = Run::open(&a.run.run)?;
    a.decode.apply(&mut run.config)?;
    let model = run.load_model(&a.run.checkpoint, &device)?;
    if a.attention.is_some() || a.attention_json.is_some() {
        return translate_with_attention(&a, &run, &model);
    }
    let nbest_format = a.decode.n_best.is_some() || run.config.decode.n_best > 1;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut done = 0usize;
    let mut emit = |lines: &[String]| -> Result<()> {
        if nbest_format {
            for (k, hyps) in translate_nbest(&model, &run.tokenizers, &run.config.decode, lines)?
                .into_iter()
                .enumerate()
            {
                for (text, score) in hyps {
                    writeln!(out, "{}\t{score:.4}\t{text}", done + k)?;
                }
            }
        } else {
            for t in translate(&model, &run.tokenizers, &run.config.decode, lines)? {
                writeln!(out, "{t}")?;
            }
        }
        done += lines.len();
        out.flush()?;
        Ok(())
    };
    if !a.text.is_empty() {
        return emit(&a.text);
    }
    let stdin = std::io::stdin();
    // Interactive input is translated line by line; piped input in batches.
    let chunk = if stdin.is_terminal() { 1 } else { 2000 };
    let mut pending = Vec::new();
    for (i, line) in stdin.lock().lines().enumerate() {
        pending.push(line.with_context(|| format!("stdin line {}: not valid UTF-8 text", i + 1))?);
        if pending.len() >= chunk {
            emit(&pending)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        emit(&pending)?;
    }
    Ok(())
}

/// `translate --attention/--attention-json`: one sentence, its translation on stdout and
/// the attention written where asked.
fn translate_with_attention(
    a: &TranslateArgs,
    run: &Run,
    model: &wick_model::Transformer,
) -> Result<()> {
    let [sentence] = a.text.as_slice() else {
        bail!(
            "--attention and --attention-json draw one sentence: give exactly one as an argument (got {})",
            a.text.len()
        )
    };
    let map = attention_map(model, &run.tokenizers, &run.config.decode, sentence)?;
    if let Some(path) = &a.attention_json {
        crate::checkpoint::write_atomic(path, serde_json::to_string(&map)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("attention weights: {}", path.display());
    }
    if let Some(path) = &a.attention {
        let panels = match a.heads {
            Some(layer) => Panels::HeadsOf(layer),
            None => Panels::LayerMeans,
        };
        draw(&map, panels, path)?;
        eprintln!("attention plot: {}", path.display());
    }
    println!("{}", map.translation);
    Ok(())
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    let hyps = wick_data::corpus::read_lines(&a.hyp)?;
    let mut refs = Vec::new();
    for r in &a.refs {
        let lines = wick_data::corpus::read_lines(r)?;
        if lines.len() != hyps.len() {
            bail!(
                "{} has {} lines but the hypothesis file {} has {}",
                r.display(),
                lines.len(),
                a.hyp.display(),
                hyps.len()
            )
        }
        refs.push(lines);
    }
    let mut json = serde_json::Map::new();
    for m in &a.metrics {
        match m.trim().to_ascii_lowercase().as_str() {
            "bleu" => {
                let s = corpus_bleu(
                    &hyps,
                    &refs,
                    BleuOptions {
                        tokenize: a.tokenize,
                        lowercase: a.lowercase,
                    },
                );
                if !a.json {
                    println!(
                        "{} = {}",
                        s.signature,
                        s.format().trim_start_matches("BLEU = ")
                    );
                }
                json.insert("bleu".into(), s.score.into());
                json.insert("bleu_signature".into(), s.signature.clone().into());
                json.insert("precisions".into(), serde_json::to_value(s.precisions)?);
                json.insert("brevity_penalty".into(), s.brevity_penalty.into());
                json.insert("hyp_len".into(), s.hyp_len.into());
                json.insert("ref_len".into(), s.ref_len.into());
                json.insert("signature".into(), s.signature.into());
            }
            name @ ("chrf" | "chrf++") => {
                let word_order = if name == "chrf++" { 2 } else { 0 };
                let s = corpus_chrf(
                    &hyps,
                    &refs,
                    ChrfOptions {
                        word_order,
                        lowercase: a.lowercase,
                        ..Default::default()
                    },
                );
                if !a.json {
                    println!("{} = {:.2}", s.signature, s.score);
                }
                let key = if word_order > 0 { "chrf++" } else { "chrf" };
                json.insert(key.into(), s.score.into());
                json.insert(format!("{key}_signature"), s.signature.into());
            }
            other => bail!("--metrics: unknown metric `{other}` (expected bleu, chrf or chrf++)"),
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(())
}

fn cmd_bench_train(a: BenchTrainArgs) -> Result<()> {
    let (model, vocab) = match &a.config {
        Some(path) => (Config::load(path, &[])?.model, a.vocab),
        None => a.preset.config(),
    };
    let (batch_size, src_len, tgt_len) = a.shape.dims()?;
    if a.steps == 0 {
        bail!("--steps must be positive")
    }
    if a.shards == 0 {
        bail!("--shards must be positive")
    }
    let device = parse_device(&a.device)?;
    let r = bench_train(BenchRequest {
        model,
        vocab,
        batch_size,
        src_len,
        tgt_len,
        steps: a.steps,
        warmup: 3,
        shards: a.shards,
        device,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "params {}  batch {}x({}+{})  {:.1} ms/step (min {:.1}, max {:.1}; gradients of {} shards {:.0}, update {:.0})  {:.0} target tokens/s  {:.1} GFLOP/s matmul  peak RSS {:.0} MB (working {:.0} MB)",
            r.params,
            r.batch_size,
            r.src_len,
            r.tgt_len,
            r.ms_per_step,
            r.ms_per_step_min,
            r.ms_per_step_max,
            r.shards,
            r.gradients_ms,
            r.update_ms,
            r.tgt_tokens_per_s,
            r.gflops,
            r.peak_rss_mb.unwrap_or(0.0),
            r.working_memory_mb.unwrap_or(0.0)
        );
    }
    Ok(())
}

fn cmd_bench_matmul(a: BenchMatmulArgs) -> Result<()> {
    let (b, s, t) = a.shape.dims()?;
    if a.repeats == 0 {
        bail!("--repeats must be positive")
    }
    let device = parse_device(&a.device)?;
    let (cfg, vocab) = a.preset.config();
    let shapes = crate::bench::step_products(&cfg, vocab, b, s, t);
    let timings = crate::bench::bench_matmul(&shapes, a.repeats, &device)?;
    let per_step = |pass: &str| -> f64 {
        timings
            .iter()
            .filter(|t| t.shape.pass == pass)
            .map(|t| t.ms * t.shape.count as f64)
            .sum()
    };
    let (forward_ms, backward_ms) = (per_step("forward"), per_step("backward"));
    let flops: f64 = timings
        .iter()
        .map(|t| 2.0 * (t.shape.m * t.shape.k * t.shape.n * t.shape.count) as f64)
        .sum();
    // What share of the step's matmul FLOPs (as `wick bench train` counts them) these cover.
    let step_flops = 3.0 * crate::bench::forward_flops(&cfg, vocab, b, s, t);
    let total_ms = forward_ms + backward_ms;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "preset": format!("{:?}", a.preset).to_lowercase(),
                "threads": candle_core::utils::get_num_threads(),
                "products": timings,
                "forward_ms": forward_ms,
                "backward_ms": backward_ms,
                "total_ms": total_ms,
                "gflops": flops / total_ms / 1e6,
                "share_of_step_flops": flops / step_flops,
            })
        );
        return Ok(());
    }
    println!(
        "{:<26} {:>9} {:>22} {:>6} {:>9} {:>8}",
        "product", "pass", "(m×k)·(k×n)", "count", "ms", "GFLOP/s"
    );
    for t in &timings {
        let s = &t.shape;
        let dims = format!(
            "({}×{}{})·({}×{}{})",
            s.m,
            s.k,
            if s.lhs_t { "ᵀ" } else { "" },
            s.k,
            s.n,
            if s.rhs_t { "ᵀ" } else { "" }
        );
        println!(
            "{:<26} {:>9} {:>22} {:>6} {:>9.3} {:>8.1}",
            s.name, s.pass, dims, s.count, t.ms, t.gflops
        );
    }
    println!(
        "per step: forward {forward_ms:.1} ms, backward {backward_ms:.1} ms, total {total_ms:.1} ms at {:.1} GFLOP/s ({:.0}% of the step's matmul FLOPs; the rest is the attention core)",
        flops / total_ms / 1e6,
        100.0 * flops / step_flops
    );
    Ok(())
}

fn cmd_bench_decode(a: BenchDecodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let timings = match (&a.run, a.preset) {
        (Some(run_dir), _) => {
            let run = Run::open(run_dir)?;
            let mut sources: Vec<String> = load_split(&run.config, a.split)?
                .into_iter()
                .map(|p| p.src)
                .collect();
            if let Some(n) = a.limit {
                sources.truncate(n);
            }
            if sources.is_empty() {
                bail!("nothing to decode: the {} split is empty", a.split.name())
            }
            crate::bench::bench_decode(crate::bench::DecodeBenchRequest {
                run: &run,
                which: a.checkpoint.clone(),
                sources,
                beam: a.beam,
                uncached: !a.no_uncached,
                repeats: a.repeats,
                device: &device,
            })?
        }
        (None, Some(preset)) => {
            if a.batch_size == 0 || a.src_len == 0 || a.steps == 0 {
                bail!("--batch-size, --src-len and --steps must be positive")
            }
            let (model, vocab) = preset.config();
            crate::bench::bench_decode_preset(crate::bench::PresetDecodeRequest {
                model,
                vocab,
                batch_size: a.batch_size,
                src_len: a.src_len,
                steps: a.steps,
                beam: a.beam,
                repeats: a.repeats,
                device,
            })?
        }
        (None, None) => bail!("give --run DIR or --preset tiny|small|base"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&timings)?);
        return Ok(());
    }
    let base = timings[0].seconds;
    for t in &timings {
        println!(
            "{:<16} {:>5} sentences  {:>7.2} s  {:>8.1} sentences/s  {:>8.0} tokens/s  ({:.2}× the time of cached greedy)",
            t.mode,
            t.sentences,
            t.seconds,
            t.sentences_per_s,
            t.tokens_per_s,
            t.seconds / base
        );
    }
    if let Some(layout) = timings[0].layout_seconds {
        println!(
            "(the weights' layout for decoding, once per model before the runs above: {layout:.2} s)"
        );
    }
    Ok(())
}

fn cmd_data_fetch(a: DataFetchArgs) -> Result<()> {
    use wick_data::hub::{Hub, HubPath};
    let mut wanted: Vec<String> = a.paths.clone();
    if let Some(path) = &a.config {
        let cfg = Config::load(path, &[])?;
        let d = &cfg.data;
        let corpus_paths = [&d.train, &d.dev, &d.test]
            .into_iter()
            .flatten()
            .flat_map(|spec| spec.paths().into_iter().map(Path::to_path_buf));
        wanted.extend(
            corpus_paths
                .chain(d.tokenizer.clone())
                .filter(|p| wick_data::hub::is_hub_path(p))
                .map(|p| p.display().to_string()),
        );
        if wanted.is_empty() {
            bail!("{} names no hf:// paths", path.display())
        }
    }
    let hub = Hub::from_env()?.offline(a.offline);
    let mut fetched = Vec::new();
    for text in &wanted {
        let Some(parsed) = HubPath::parse(text) else {
            bail!("{text}: not an hf:// path (e.g. hf://datasets/bentrevett/multi30k/train.jsonl)")
        };
        for (path, local) in hub.fetch(&parsed?)? {
            let bytes = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
            if !a.json {
                println!("{path}\t{}\t{bytes} bytes", local.display());
            }
            fetched.push(serde_json::json!({
                "path": path.to_string(),
                "local": local.display().to_string(),
                "bytes": bytes,
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(fetched));
    } else {
        eprintln!("hub cache: {}", hub.cache_dir().display());
    }
    Ok(())
}

fn cmd_data_check(a: DataCheckArgs) -> Result<()> {
    let cfg = match &a.config {
        Some(path) => Config::load(path, &a.overrides)?,
        None => Config::from_toml(
            EMBEDDED_DEFAULT,
            Path::new("<embedded configs/toy.toml>"),
            &a.overrides,
        )?,
    };
    let splits: Vec<(String, wick_data::CorpusSpec)> = match (&a.src, &a.tgt, &a.tsv) {
        (Some(src), Some(tgt), _) => vec![(
            "train".into(),
            wick_data::CorpusSpec::Files {
                src: src.clone(),
                tgt: tgt.clone(),
            },
        )],
        (_, _, Some(tsv)) => vec![("train".into(), wick_data::CorpusSpec::Tsv(tsv.clone()))],
        _ => {
            if cfg.data.synthetic.is_some() {
                bail!(
                    "the config's data is synthetic ([data.synthetic]); there is no corpus to check"
                )
            }
            [
                ("train", &cfg.data.train),
                ("dev", &cfg.data.dev),
                ("test", &cfg.data.test),
            ]
            .into_iter()
            .filter_map(|(n, s)| s.clone().map(|s| (n.to_string(), s)))
            .collect()
        }
    };
    let report = crate::datacheck::check(&splits, cfg.data.max_len, cfg.data.on_bad_line);
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.fatal.is_empty() {
        bail!(
            "{} fatal problem(s) in the data; see above",
            report.fatal.len()
        )
    }
    Ok(())
}

fn cmd_average(a: AverageArgs) -> Result<()> {
    use crate::average::{Selection, average};
    let run = Run::open(&a.run)?;
    let selection = match (a.last, a.best) {
        (Some(k), _) => Selection::Last(k),
        (_, Some(k)) => Selection::Best(k),
        _ => bail!("give --last K or --best K"),
    };
    let (path, from) = average(&run, selection, a.output)?;
    for c in &from {
        eprintln!(
            "  {} (step {}, dev BLEU {:.2}, dev loss {:.3})",
            c.file, c.step, c.dev_bleu, c.dev_loss
        );
    }
    println!(
        "averaged {} checkpoints into {}",
        from.len(),
        path.display()
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    println!(
        "try: wick evaluate --run {} --checkpoint {name}",
        run.dir.display()
    );
    Ok(())
}
