//! `wick train`: a new run from a config, or `--resume` of an existing one; then the test
//! split scored with the best checkpoint.

use std::path::Path;

use anyhow::Result;
use wick_train::config::{Config, EMBEDDED_DEFAULT};
use wick_train::device::parse_device;
use wick_train::evaluate::{EvalRequest, evaluate};
use wick_train::prepare::{Split, load_split};
use wick_train::run::{Run, Which, fresh_run_dir};
use wick_train::{ResumeRequest, TrainRequest, resume, train};

use crate::args::TrainArgs;
use crate::progress::BarProgress;

pub(crate) fn cmd_train(a: TrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (summary, config, run_dir) = if let Some(dir) = &a.resume {
        let summary = resume(ResumeRequest {
            run_dir: dir.clone(),
            overrides: a.overrides.clone(),
            device: device.clone(),
            progress: Box::new(BarProgress::new()),
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
            progress: Box::new(BarProgress::new()),
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
        super::evaluate::print_intervals(&report);
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
