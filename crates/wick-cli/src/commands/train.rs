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
    let run = Run::open(&run_dir)?;
    let dir = run_dir.display();
    println!();
    // The test split scored with the best checkpoint, as `wick evaluate` would.
    let has_test = config.data.test.is_some() || config.data.synthetic.is_some();
    let mut hyp_file = None;
    if has_test {
        let report = evaluate(EvalRequest {
            run: &run,
            which: Which::Best,
            split: Split::Test,
            src_ref: None,
            output: None,
            device: &device,
            weights: Default::default(),
        })?;
        let decoding = match report.beam {
            1 => "greedy".to_string(),
            k => format!("beam {k}, length penalty {}", config.decode.length_penalty),
        };
        println!(
            "test split: {} sentences, best checkpoint (step {}, dev BLEU {:.2}), {decoding}:",
            report.n_sentences,
            summary.best_step.unwrap_or(0),
            summary.best_dev_bleu.unwrap_or(0.0)
        );
        println!(
            "  BLEU  {:>6.2}  95% CI [{:.2}, {:.2}]   word n-gram overlap with the reference, 0-100",
            report.bleu, report.bleu_ci.low, report.bleu_ci.high
        );
        println!(
            "  chrF2 {:>6.2}  95% CI [{:.2}, {:.2}]   character n-gram F-score, 0-100",
            report.chrf, report.chrf_ci.low, report.chrf_ci.high
        );
        println!(
            "  exact match {:.1}%; one reference per sentence, so correct paraphrases score low",
            100.0 * report.exact_match
        );
        println!("  {}", report.bleu_detail);
        println!("  {}", report.signature);
        if a.samples > 0 {
            let pairs = load_split(&config, Split::Test)?;
            let hyps = std::fs::read_to_string(&report.hyp_file)?;
            println!("\nsample translations (test split):");
            for (p, h) in pairs.iter().zip(hyps.lines()).take(a.samples) {
                println!(
                    "  source:      {}\n  reference:   {}\n  translation: {h}\n",
                    p.src, p.tgt
                );
            }
        }
        hyp_file = Some(report.hyp_file);
    }
    let report = wick_train::report::write_report(wick_train::report::ReportRequest {
        run_dir: &run_dir,
        output: None,
        samples: 4,
        device: &device,
    })?;
    println!("everything is in {dir}:");
    println!(
        "  report.html                     curves, test scores, attention maps: open it in a browser"
    );
    let by = match config.train.best_metric {
        wick_train::config::BestMetric::Bleu => "dev BLEU",
        wick_train::config::BestMetric::Loss => "dev loss",
    };
    println!(
        "  checkpoints/best.safetensors    the best checkpoint by {by} (checkpoints/index.json lists all)"
    );
    if let Some(h) = &hyp_file {
        let name = h.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        println!("  {name:<31} the test translations");
    }
    println!("  metrics.jsonl, progress.jsonl   the numbers behind the curves");
    println!("  config.toml, manifest.json      the resolved config, data hashes and versions");
    println!("\ntry next:");
    println!("  wick translate --run {dir} \"I like tea.\"");
    println!("  wick translate --run {dir} --attention attention.svg \"Where is the station?\"");
    println!("  wick evaluate --run {dir} --beam 5");
    println!(
        "  wick report --run {dir}    (rewrites {})",
        report.html.display()
    );
    Ok(())
}
