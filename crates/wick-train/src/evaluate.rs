//! `wick evaluate`: translate a split of a run and score it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use wick_data::Pair;
use wick_data::corpus::read_lines;

use wick_metrics::{
    BleuOptions, BleuStats, ChrfOptions, ChrfStats, ConfidenceInterval, bleu_chrf_intervals,
    bleu_from_stats, bleu_segments, chrf_segments, chrf_signature,
};

use crate::prepare::{Split, load_split};
use crate::run::{Run, Which};
use crate::translator::{Translator, source_limit};
use wick_model::ops::WeightFormat;

/// Reports written before int8 decoding existed decoded with f32 weights.
fn float32() -> String {
    "float32".into()
}

/// Bootstrap resamples for the confidence intervals, and their seed (fixed, so two
/// evaluations of the same output print the same interval).
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
pub const BOOTSTRAP_SEED: u64 = 12345;

/// Upper bounds (inclusive, in whitespace-separated source words) of the length buckets;
/// the last bucket is open-ended.
const LENGTH_BUCKETS: [usize; 6] = [5, 10, 15, 20, 30, 40];

/// Scores of the sentences whose source has `min_words..=max_words` words.
#[derive(Debug, Serialize, Deserialize)]
pub struct LengthBucket {
    pub min_words: usize,
    /// `None` for the open-ended last bucket.
    pub max_words: Option<usize>,
    pub n_sentences: usize,
    pub bleu: f64,
    pub chrf: f64,
    /// Mean hypothesis / reference length in BLEU tokens.
    pub length_ratio: f64,
}

impl LengthBucket {
    pub fn label(&self) -> String {
        match self.max_words {
            Some(m) => format!("{}-{m}", self.min_words),
            None => format!("{}+", self.min_words),
        }
    }
}

/// Splits the corpus by source length (in words) and scores each non-empty part.
fn length_buckets(sources: &[String], bleu: &[BleuStats], chrf: &[ChrfStats]) -> Vec<LengthBucket> {
    let mut out = Vec::new();
    let mut lo = 0;
    for k in 0..=LENGTH_BUCKETS.len() {
        let hi = LENGTH_BUCKETS.get(k).copied();
        let mut b = BleuStats::default();
        let mut c = ChrfStats::default();
        let mut n = 0;
        for (i, s) in sources.iter().enumerate() {
            let words = s.split_whitespace().count();
            if words >= lo && hi.is_none_or(|h| words <= h) {
                b += bleu[i];
                c += &chrf[i];
                n += 1;
            }
        }
        if n > 0 {
            out.push(LengthBucket {
                min_words: lo,
                max_words: hi,
                n_sentences: n,
                bleu: bleu_from_stats(&b, BleuOptions::default(), 1).score,
                chrf: c.score(),
                length_ratio: b.hyp_len as f64 / b.ref_len.max(1) as f64,
            });
        }
        lo = hi.map_or(lo, |h| h + 1);
    }
    out
}

/// What an evaluation found; also written to the run directory as
/// `eval.<split>.<checkpoint>[.beamK].json` (the report reads the latest test one).
#[derive(Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub bleu: f64,
    pub bleu_signature: String,
    pub bleu_detail: String,
    pub chrf: f64,
    pub chrf_signature: String,
    /// 95% bootstrap confidence intervals (percentile method).
    pub bleu_ci: ConfidenceInterval,
    pub chrf_ci: ConfidenceInterval,
    /// BLEU and chrF per source-length bucket.
    pub by_length: Vec<LengthBucket>,
    /// Both signatures, `BLEU|… / chrF2|…`.
    pub signature: String,
    /// Fraction of hypotheses identical to their reference.
    pub exact_match: f64,
    pub n_sentences: usize,
    pub hyp_file: PathBuf,
    /// With `decode.n_best > 1`: the n-best list, `index<TAB>score<TAB>translation` lines.
    pub nbest_file: Option<PathBuf>,
    pub checkpoint: PathBuf,
    /// Beam size used (1: greedy).
    pub beam: usize,
    /// `"float32"`, or `"int8"` for weights quantized for decoding.
    #[serde(default = "float32")]
    pub weights: String,
    /// Per-token perplexity of the references under the model (teacher-forced), and the
    /// fraction of reference tokens that are its argmax; pairs longer than the model's
    /// position table are left out of these two (`ref_pairs_scored` says how many count).
    pub ref_ppl: f64,
    pub ref_token_acc: f64,
    pub ref_pairs_scored: usize,
    pub seconds: f64,
    pub sentences_per_s: f64,
}

pub struct EvalRequest<'a> {
    pub run: &'a Run,
    pub which: Which,
    pub split: Split,
    /// Score these files instead of a configured split.
    pub src_ref: Option<(PathBuf, PathBuf)>,
    pub output: Option<PathBuf>,
    pub device: &'a Device,
    /// Decode with f32 weights, or int8 (`--quantize int8`).
    pub weights: WeightFormat,
}

fn pairs_from_files(src: &Path, reference: &Path) -> Result<Vec<Pair>> {
    let s = read_lines(src)?;
    let r = read_lines(reference)?;
    if s.len() != r.len() {
        bail!(
            "{} has {} lines but {} has {}",
            src.display(),
            s.len(),
            reference.display(),
            r.len()
        )
    }
    Ok(s.into_iter()
        .zip(r)
        .map(|(src, tgt)| Pair { src, tgt })
        .collect())
}

pub fn evaluate(req: EvalRequest) -> Result<EvalReport> {
    let run = req.run;
    let pairs = match &req.src_ref {
        Some((s, r)) => pairs_from_files(s, r)?,
        None => load_split(&run.config, req.split)?,
    };
    if pairs.is_empty() {
        bail!("nothing to evaluate: the split is empty")
    }
    let model = run.load_model(&req.which, req.device)?;
    // Timed from the layout for decoding on, as a `wick translate` call would be.
    let start = Instant::now();
    let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
    let decode = &run.config.decode;
    let translator = Translator::from_model(&model, run.tokenizers.clone(), decode.clone())?
        .with_weights(req.weights)?;
    let nbest = if decode.n_best > 1 {
        Some(translator.translate_nbest(&sources)?)
    } else {
        None
    };
    let hyps = match &nbest {
        Some(lists) => lists.iter().map(|l| l[0].text.clone()).collect(),
        None => translator.translate(&sources)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let refs = vec![pairs.iter().map(|p| p.tgt.clone()).collect::<Vec<_>>()];
    let bleu_opts = BleuOptions::default();
    let chrf_opts = ChrfOptions::default();
    let bleu_segs = bleu_segments(&hyps, &refs, bleu_opts);
    let chrf_segs = chrf_segments(&hyps, &refs, chrf_opts);
    let mut bleu_total = BleuStats::default();
    let mut chrf_total = ChrfStats::default();
    for (b, c) in bleu_segs.iter().zip(&chrf_segs) {
        bleu_total += *b;
        chrf_total += c;
    }
    let bleu = bleu_from_stats(&bleu_total, bleu_opts, 1);
    let chrf = chrf_total.score();
    let (bleu_ci, chrf_ci) = bleu_chrf_intervals(
        &bleu_segs,
        &chrf_segs,
        bleu_opts,
        BOOTSTRAP_RESAMPLES,
        BOOTSTRAP_SEED,
    );
    let by_length = length_buckets(&sources, &bleu_segs, &chrf_segs);
    let chrf_signature = chrf_signature(chrf_opts, 1);
    let exact =
        hyps.iter().zip(&refs[0]).filter(|(h, r)| h == r).count() as f64 / hyps.len() as f64;
    // Forced decoding of the references; pairs too long for the model are left out.
    let max_len = source_limit(&model) - 2;
    let (examples, _) = crate::prepare::encode_pairs(&run.tokenizers, &pairs, Some(max_len))?;
    let (_, ref_ppl, ref_token_acc) =
        crate::trainer::evaluate_loss(&model, &examples, &run.config)?;
    // Named after what produced it, so greedy and beam outputs do not overwrite each other.
    let stem = {
        let name = if req.src_ref.is_some() {
            "files"
        } else {
            req.split.name()
        };
        let which = req.which.label();
        let beam = match run.config.decode.beam {
            1 => String::new(),
            k => format!(".beam{k}"),
        };
        let weights = match req.weights {
            WeightFormat::F32 => "",
            WeightFormat::Int8 => ".int8",
        };
        format!("{name}.{which}{beam}{weights}")
    };
    let hyp_file = req
        .output
        .clone()
        .unwrap_or_else(|| run.dir.join(format!("hyp.{stem}.txt")));

    let mut text = hyps.join("\n");
    text.push('\n');
    crate::checkpoint::write_atomic(&hyp_file, text.as_bytes())?;
    let nbest_file = match &nbest {
        Some(lists) => {
            let mut text = String::new();
            for (i, list) in lists.iter().enumerate() {
                for c in list {
                    text.push_str(&format!("{i}\t{:.4}\t{}\n", c.score, c.text));
                }
            }
            let mut name = hyp_file.clone().into_os_string();
            name.push(".nbest");
            let path = PathBuf::from(name);
            crate::checkpoint::write_atomic(&path, text.as_bytes())?;
            Some(path)
        }
        None => None,
    };
    let report = EvalReport {
        bleu: bleu.score,
        signature: format!("{} / {}", bleu.signature, chrf_signature),
        bleu_detail: bleu.format(),
        bleu_signature: bleu.signature,
        chrf,
        chrf_signature,
        bleu_ci,
        chrf_ci,
        by_length,
        nbest_file,
        exact_match: exact,
        n_sentences: hyps.len(),
        hyp_file,
        checkpoint: run.checkpoint_path(&req.which),
        beam: run.config.decode.beam,
        weights: req.weights.name().to_string(),
        ref_ppl,
        ref_token_acc,
        ref_pairs_scored: examples.len(),
        seconds,
        sentences_per_s: hyps.len() as f64 / seconds.max(1e-9),
    };
    crate::checkpoint::write_atomic(
        &run.dir.join(format!("eval.{stem}.json")),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}
