//! Decoding with int8 weights (`--quantize int8`) as a user runs it: `translate`, `evaluate`
//! and `bench decode` take the flag, the scores stay next to float32's, the composed path (what
//! a GPU would run) decodes the same, and the evaluation files say which weights made them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{ok, wick_on};

fn evaluate(run: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["evaluate", "--run", run, "--beam", "1", "--json"];
    args.extend(extra);
    serde_json::from_str(&ok(wick_on(false, &args))).unwrap()
}

#[test]
fn int8_decoding_stays_next_to_float32() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("reverse");
    let run = run.to_str().unwrap();
    ok(wick_on(
        false,
        &[
            "train",
            "--config",
            "configs/reverse.toml",
            "--run-dir",
            run,
            "--samples",
            "0",
            "--set",
            "train.max_steps=400",
            "--set",
            "train.validate_every=400",
            "--set",
            "data.synthetic.n_test=200",
        ],
    ));
    let f32_report = evaluate(run, &[]);
    let int8_report = evaluate(run, &["--quantize", "int8"]);
    assert_eq!(int8_report["weights"], "int8");
    assert_eq!(f32_report["weights"], "float32");
    let (a, b) = (
        f32_report["exact_match"].as_f64().unwrap(),
        int8_report["exact_match"].as_f64().unwrap(),
    );
    assert!(a > 0.3, "the model learned something: exact match {a}");
    assert!((a - b).abs() <= 0.05, "float32 exact match {a}, int8 {b}");
    // Separate files: int8 output never overwrites float32's.
    let (fa, fb) = (
        f32_report["hyp_file"].as_str().unwrap(),
        int8_report["hyp_file"].as_str().unwrap(),
    );
    assert!(fb.ends_with(".int8.txt") && fa != fb, "{fa} {fb}");

    // The kernels and the composed path decode alike with int8 weights.
    let args = [
        "translate",
        "--run",
        run,
        "--quantize",
        "int8",
        "c a f e b",
        "h g e d",
    ];
    let kernels = ok(wick_on(false, &args));
    let composed = ok(wick_on(true, &args));
    assert_eq!(kernels, composed);
    assert_eq!(kernels.lines().count(), 2);

    let bench = ok(wick_on(
        false,
        &[
            "bench",
            "decode",
            "--preset",
            "tiny",
            "--batch-size",
            "4",
            "--src-len",
            "6",
            "--steps",
            "3",
            "--beam",
            "2",
            "--quantize",
            "int8",
            "--json",
        ],
    ));
    let timings: serde_json::Value = serde_json::from_str(&bench).unwrap();
    assert_eq!(timings.as_array().unwrap().len(), 2, "{bench}");

    let refused = wick_on(
        false,
        &["translate", "--run", run, "--quantize", "int4", "a"],
    );
    assert!(!refused.status.success());
}
