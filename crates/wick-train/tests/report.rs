//! The report's numbers are the run's numbers: every plotted point of the curves equals a line
//! of `metrics.jsonl` or `progress.jsonl`, a resumed run gives one curve without repeated
//! steps, and a run that has not validated yet still gets a report.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::Path;

use candle_core::Device;
use wick_train::report::{ReportRequest, write_report};
use wick_train::{Config, ResumeRequest, StderrProgress, TrainRequest, resume, train};

const CONFIG: &str = r#"
[data.synthetic]
task = "reverse"
n_symbols = 8
min_len = 2
max_len = 5
n_train = 1500
n_dev = 30
n_test = 30

[data]
vocab_size = 300
min_frequency = 1
max_len = 12

[model]
d_model = 16
n_heads = 2
encoder_layers = 1
decoder_layers = 1
d_ff = 32
max_positions = 32

[train]
max_steps = 40
max_epochs = 0
batch_tokens = 300
log_every = 5
validate_every = 10
warmup_steps = 10
"#;

/// `(data-x, data-y)` of the points of series `name` in the chart `id` of a report.
fn points(html: &str, id: &str, name: &str) -> Vec<(f64, f64)> {
    let chart = &html[html.find(&format!(r#"id="{id}""#)).unwrap()..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    let series = &chart[chart.find(&format!(r#"data-name="{name}""#)).unwrap()..];
    let series = &series[..series.find("</g>").unwrap()];
    series
        .split("<circle ")
        .skip(1)
        .map(|c| {
            let attr = |k: &str| -> f64 {
                let at = c.find(&format!(r#"{k}=""#)).unwrap() + k.len() + 2;
                c[at..at + c[at..].find('"').unwrap()].parse().unwrap()
            };
            (attr("data-x"), attr("data-y"))
        })
        .collect()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn report(run: &Path) -> String {
    let files = write_report(ReportRequest {
        run_dir: run,
        output: None,
        samples: 2,
        device: &Device::Cpu,
    })
    .unwrap();
    assert!(files.curves.is_file());
    std::fs::read_to_string(files.html).unwrap()
}

#[test]
fn the_report_plots_the_runs_numbers_once_per_step_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = Config::from_toml(
        CONFIG,
        Path::new("tiny.toml"),
        &["train.max_steps=20".into()],
    )
    .unwrap();
    train(TrainRequest::new(cfg, &run)).unwrap();
    let before = report(&run);
    assert!(
        before.contains("finished: 20 updates"),
        "status of the first session"
    );
    resume(ResumeRequest {
        run_dir: run.clone(),
        overrides: vec!["train.max_steps=40".into()],
        device: Device::Cpu,
        progress: Box::new(StderrProgress::default()),
    })
    .unwrap();
    // A test evaluation, as `wick train` does at the end.
    let opened = wick_train::Run::open(&run).unwrap();
    wick_train::evaluate::evaluate(wick_train::evaluate::EvalRequest {
        run: &opened,
        which: wick_train::Which::Best,
        split: wick_train::prepare::Split::Test,
        src_ref: None,
        output: None,
        device: &Device::Cpu,
        weights: Default::default(),
    })
    .unwrap();
    let html = report(&run);

    let metrics = jsonl(&run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4, "validations at 10, 20, 30, 40");
    for (chart, series, key) in [
        ("loss-step", "dev", "dev_loss"),
        ("scores-step", "BLEU", "dev_bleu"),
        ("scores-step", "chrF2", "dev_chrf"),
    ] {
        let got = points(&html, chart, series);
        let want: Vec<(f64, f64)> = metrics
            .iter()
            .map(|m| (m["step"].as_f64().unwrap(), m[key].as_f64().unwrap()))
            .collect();
        assert_eq!(got, want, "{chart} / {series}");
    }
    let progress = jsonl(&run.join("progress.jsonl"));
    let steps: Vec<u64> = progress
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=8).map(|i| 5 * i).collect::<Vec<u64>>(),
        "one line per step"
    );
    let got = points(&html, "lr-step", "lr");
    let want: Vec<(f64, f64)> = progress
        .iter()
        .map(|p| (p["step"].as_f64().unwrap(), p["lr"].as_f64().unwrap()))
        .collect();
    assert_eq!(got, want);
    // Against training time: the second session continues the first's clock.
    let time = points(&html, "loss-time", "train");
    assert!(time.windows(2).all(|w| w[1].0 >= w[0].0), "{time:?}");
    let first_session_end = progress[3]["train_seconds"].as_f64().unwrap();
    assert!(progress[4]["train_seconds"].as_f64().unwrap() >= first_session_end);

    // The rest of the page: test scores, samples with attention, usage, data, config.
    for needle in [
        "finished: 40 updates",
        "id=\"bleu-by-length\"",
        "<svg class=\"heatmap\"",
        "wick translate --run",
        "dev sources also in train",
        "[model]",
        "arch = &quot;transformer&quot;",
    ] {
        assert!(html.contains(needle), "the report lacks {needle}");
    }
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "no network"
    );
}

#[test]
fn a_run_without_validations_gets_a_report_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = Config::from_toml(CONFIG, Path::new("tiny.toml"), &[]).unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
    let html = report(&run);
    assert!(html.contains("no data yet"));
    assert!(html.contains("No test evaluation"));
    assert!(html.contains("No samples"));
}
