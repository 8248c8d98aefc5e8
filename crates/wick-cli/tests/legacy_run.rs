//! A run directory written by wick 0.1.0 before `[model] arch` existed (`tests/fixtures/legacy`:
//! a tiny reverse-task Transformer, trained 800 steps by that version) still loads, translates
//! and evaluates to exactly what that version printed, and resumes to the validation figures
//! that version reached: the same accuracy, BLEU and chrF, and the dev loss within 1e-6
//! relative (the forward pass is the same bit for bit; the backward sums some gradients in
//! another order, now that the embedding and the residual sums are single autograd nodes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy")
}

fn wick(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("wick runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "wick failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A copy of the fixture run (commands write into the run directory).
fn copy_run(to: &Path) -> PathBuf {
    let run = to.join("run");
    for entry in walk(&fixture().join("run")) {
        let rel = entry.strip_prefix(fixture().join("run")).unwrap();
        let dst = run.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dst).unwrap();
    }
    run
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const SENTENCES: [&str; 3] = ["c a f e", "t s r q p", "a b"];

#[test]
fn an_old_run_translates_and_evaluates_as_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_run(tmp.path());
    let run = run.to_str().unwrap();
    let config = std::fs::read_to_string(Path::new(run).join("config.toml")).unwrap();
    assert!(!config.contains("arch"), "the fixture predates model.arch");

    let mut args = vec!["translate", "--run", run];
    args.extend(SENTENCES);
    let greedy = ok(&wick(&args));
    let want = std::fs::read_to_string(fixture().join("greedy.txt")).unwrap();
    assert_eq!(greedy, want);

    let mut args = vec!["translate", "--run", run, "--beam", "3", "--n-best", "3"];
    args.extend(SENTENCES);
    let nbest = ok(&wick(&args));
    let want = std::fs::read_to_string(fixture().join("nbest.txt")).unwrap();
    assert_eq!(nbest, want);

    let report: serde_json::Value =
        serde_json::from_str(&ok(&wick(&["evaluate", "--run", run, "--json"]))).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("evaluate.json")).unwrap())
            .unwrap();
    for key in ["bleu", "chrf", "exact_match", "n_sentences"] {
        assert_eq!(report[key], want[key], "{key}");
    }
}

#[test]
fn an_old_run_resumes_to_the_figures_it_reached() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_run(tmp.path());
    let run_s = run.to_str().unwrap();
    let o = wick(&[
        "train",
        "--resume",
        run_s,
        "--set",
        "train.max_steps=900",
        "--set",
        "train.validate_every=50",
        "--samples",
        "0",
    ]);
    ok(&o);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let got: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["step"].as_u64() > Some(800))
        .collect();
    let want: Vec<serde_json::Value> =
        std::fs::read_to_string(fixture().join("resumed-metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["step"], w["step"]);
        for key in ["dev_acc", "dev_bleu", "dev_chrf", "lr"] {
            assert_eq!(g[key], w[key], "step {}: {key}", w["step"]);
        }
        let (a, b) = (
            g["dev_loss"].as_f64().unwrap(),
            w["dev_loss"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-6 * b,
            "step {}: dev loss {a} vs {b}",
            w["step"]
        );
    }
    // The manifest gains the ops that trained the resumed session.
    let manifest = std::fs::read_to_string(run.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"ops\": \"kernels\""), "{manifest}");
}
