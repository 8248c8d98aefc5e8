//! `wick evaluate`: translate a split of a run and score it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::Device;
use serde::Serialize;
use wick_data::Pair;
use wick_data::corpus::read_lines;

use crate::metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};
use crate::prepare::{Split, load_split};
use crate::run::{Run, Which};
use crate::translate::translate;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub bleu: f64,
    pub bleu_signature: String,
    pub bleu_detail: String,
    pub chrf: f64,
    pub chrf_signature: String,
    /// Both signatures, `BLEU|… / chrF2|…`.
    pub signature: String,
    /// Fraction of hypotheses identical to their reference.
    pub exact_match: f64,
    pub n_sentences: usize,
    pub hyp_file: PathBuf,
    pub checkpoint: PathBuf,
    /// Beam size used (1: greedy).
    pub beam: usize,
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
    let model = run.load_model(req.which, req.device)?;
    let start = Instant::now();
    let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
    let hyps = translate(&model, &run.tokenizers, &run.config.decode, &sources)?;
    let seconds = start.elapsed().as_secs_f64();
    let refs = vec![pairs.iter().map(|p| p.tgt.clone()).collect::<Vec<_>>()];
    let bleu = corpus_bleu(&hyps, &refs, BleuOptions::default());
    let chrf = corpus_chrf(&hyps, &refs, ChrfOptions::default());
    let exact =
        hyps.iter().zip(&refs[0]).filter(|(h, r)| h == r).count() as f64 / hyps.len() as f64;
    // Forced decoding of the references; pairs too long for the position table are left out.
    let max_len = run.config.model.max_positions - 2;
    let (examples, _) = crate::prepare::encode_pairs(&run.tokenizers, &pairs, Some(max_len))?;
    let (_, ref_ppl, ref_token_acc) =
        crate::trainer::evaluate_loss(&model, &examples, &run.config)?;
    // Named after what produced it, so greedy and beam outputs do not overwrite each other.
    let hyp_file = req.output.clone().unwrap_or_else(|| {
        let name = if req.src_ref.is_some() {
            "files"
        } else {
            req.split.name()
        };
        let which = match req.which {
            Which::Best => "best",
            Which::Last => "last",
        };
        let beam = match run.config.decode.beam {
            1 => String::new(),
            k => format!(".beam{k}"),
        };
        run.dir.join(format!("hyp.{name}.{which}{beam}.txt"))
    });

    let mut text = hyps.join("\n");
    text.push('\n');
    crate::checkpoint::write_atomic(&hyp_file, text.as_bytes())?;
    Ok(EvalReport {
        bleu: bleu.score,
        signature: format!("{} / {}", bleu.signature, chrf.signature),
        bleu_detail: bleu.format(),
        bleu_signature: bleu.signature,
        chrf: chrf.score,
        chrf_signature: chrf.signature,
        exact_match: exact,
        n_sentences: hyps.len(),
        hyp_file,
        checkpoint: run.checkpoint_path(req.which),
        beam: run.config.decode.beam,
        ref_ppl,
        ref_token_acc,
        ref_pairs_scored: examples.len(),
        seconds,
        sentences_per_s: hyps.len() as f64 / seconds.max(1e-9),
    })
}
