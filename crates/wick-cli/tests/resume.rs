//! `wick train --resume`: stopping and resuming gives bit-identical weights to training
//! straight through (dropout on), and changes that would break the checkpoint are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn wick(args: &[&str]) -> Output {
    wick_on(false, args)
}

/// `wick` on the kernel path, or on the reference path (`WICK_REFERENCE_OPS=1`).
fn wick_on(reference: bool, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .env("WICK_REFERENCE_OPS", if reference { "1" } else { "0" })
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .stdin(Stdio::null())
        .output()
        .expect("wick runs")
}

const SMALL: [&str; 18] = [
    "--set",
    "data.synthetic.n_train=500",
    "--set",
    "model.d_model=32",
    "--set",
    "model.d_ff=64",
    "--set",
    "model.dropout=0.2",
    "--set",
    "train.schedule=inverse_sqrt",
    "--set",
    "train.validate_every=7",
    "--set",
    "train.batch_tokens=300",
    "--set",
    "train.warmup_steps=10",
    "--set",
    "data.synthetic.n_test=20",
];

fn train(run: &Path, steps: usize) {
    train_on(false, run, steps)
}

fn train_on(reference: bool, run: &Path, steps: usize) {
    let mut args = vec![
        "train",
        "--config",
        "configs/reverse.toml",
        "--run-dir",
        run.to_str().unwrap(),
        "--samples",
        "0",
    ];
    let max = format!("train.max_steps={steps}");
    args.extend(SMALL);
    args.extend(["--set", &max]);
    let o = wick_on(reference, &args);
    assert!(
        o.status.success(),
        "train: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn resume_on(reference: bool, run: &Path, steps: usize) -> Output {
    let max = format!("train.max_steps={steps}");
    wick_on(
        reference,
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--set",
            &max,
            "--samples",
            "0",
        ],
    )
}

fn weights(run: &Path) -> Vec<(String, Vec<u32>)> {
    let (t, _) = wick_train::checkpoint::load(
        &run.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut out: Vec<(String, Vec<u32>)> = t
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn resumed_training_equals_straight_training_bit_for_bit() {
    resumed_equals_straight(false);
}

/// The same on the composed reference path that GPUs run (`WICK_REFERENCE_OPS=1`).
#[test]
fn resumed_training_equals_straight_training_on_the_reference_path() {
    resumed_equals_straight(true);
}

fn resumed_equals_straight(reference: bool) {
    let dir = tempfile::tempdir().unwrap();
    let straight: PathBuf = dir.path().join("straight");
    let split: PathBuf = dir.path().join("split");
    train_on(reference, &straight, 30);
    train_on(reference, &split, 15);
    let manifest = std::fs::read_to_string(split.join("manifest.json")).unwrap();
    let ops = if reference { "reference" } else { "kernels" };
    assert!(
        manifest.contains(&format!("\"ops\": \"{ops}\"")),
        "{manifest}"
    );
    let o = resume_on(reference, &split, 30);
    assert!(
        o.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("resuming"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (a, b) = (weights(&straight), weights(&split));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(
            va == vb,
            "{ka}: resumed weights differ from straight training"
        );
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 30);

    // Resuming a finished run without a larger budget trains nothing more.
    let o = resume_on(reference, &split, 30);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(weights(&split), b);
}

#[test]
fn same_config_data_and_seed_give_identical_weights_other_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&a, 12);
    train(&b, 12);
    assert!(weights(&a) == weights(&b), "two identical runs differ");
    let c = dir.path().join("c");
    let mut args = vec![
        "train",
        "--config",
        "configs/reverse.toml",
        "--run-dir",
        c.to_str().unwrap(),
        "--samples",
        "0",
        "--seed",
        "2",
        "--set",
        "train.max_steps=12",
    ];
    args.extend(SMALL);
    let o = wick(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(weights(&a) != weights(&c), "the seed changes nothing");
}

#[test]
fn resume_refuses_architecture_changes_and_non_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, 3);
    let o = wick(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        "model.d_model=64",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("[model]") && !err.contains("panicked"),
        "{err}"
    );
    let o = wick(&["train", "--resume", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not a wick run directory"),
        "{err}"
    );
}
