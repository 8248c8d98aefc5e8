//! `wick evaluate`: translate a split (or files) and score it.

use anyhow::Result;
use wick_train::device::parse_device;
use wick_train::evaluate::{EvalReport, EvalRequest, evaluate};
use wick_train::run::Run;

use crate::args::EvaluateArgs;

pub(crate) fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
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
        weights: a.decode.weights(),
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
pub(crate) fn print_intervals(report: &EvalReport) {
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
