//! The RNN and ConvS2S architectures through the `wick` binary, as a user runs them: train
//! from the shipped sanity configs (every attention type by `--set`), resume bit for bit on
//! the kernel path and on the reference path, translate with n-best and attention maps,
//! evaluate with beam search, average, report. And the errors a misplaced key gets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::Path;

use common::{ok, wick_on};

/// Small and quick: a few hundred sequences, a few dozen updates; a schedule that does not
/// depend on `max_steps`, so that a run stopped early is the start of the longer one.
const QUICK: [&str; 14] = [
    "--set",
    "train.schedule=inverse_sqrt",
    "--set",
    "data.synthetic.n_train=400",
    "--set",
    "train.validate_every=10",
    "--set",
    "train.batch_tokens=300",
    "--set",
    "train.warmup_steps=5",
    "--set",
    "data.synthetic.n_test=20",
    "--samples",
    "0",
];

fn train(reference: bool, config: &str, run: &str, steps: usize, extra: &[&str]) -> String {
    let steps = format!("train.max_steps={steps}");
    let mut args = vec![
        "train",
        "--config",
        config,
        "--run-dir",
        run,
        "--set",
        &steps,
    ];
    args.extend(QUICK);
    args.extend(extra);
    ok(wick_on(reference, &args))
}

fn last_weights(run: &str) -> Vec<(String, Vec<u32>)> {
    let path = Path::new(run).join("checkpoints/last.safetensors");
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, v.iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    out.sort();
    out
}

/// Straight through, and stopped at 10 then resumed to 30: the same weights, bit for bit.
fn resumes_exactly(reference: bool, config: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight").display().to_string();
    let split = dir.path().join("split").display().to_string();
    train(reference, config, &straight, 30, extra);
    train(reference, config, &split, 10, extra);
    ok(wick_on(
        reference,
        &[
            "train",
            "--resume",
            &split,
            "--set",
            "train.max_steps=30",
            "--samples",
            "0",
        ],
    ));
    assert!(
        last_weights(&straight) == last_weights(&split),
        "{config} {extra:?}: resumed weights differ (reference path: {reference})"
    );
}

#[test]
fn rnn_and_conv_resume_bit_for_bit_on_both_paths() {
    for reference in [false, true] {
        resumes_exactly(
            reference,
            "configs/reverse-rnn.toml",
            &["--set", "model.cell=lstm"],
        );
        resumes_exactly(reference, "configs/reverse-conv.toml", &[]);
    }
}

/// Every attention type trains from the shipped config by `--set`, then decodes, evaluates,
/// averages, draws its attention (one panel for the RNN, one per decoder layer for ConvS2S)
/// and has a report.
#[test]
fn every_architecture_and_attention_runs_through_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], usize); 6] = [
        (
            "configs/reverse-rnn.toml",
            &["--set", "model.attention=bahdanau"],
            1,
        ),
        (
            "configs/reverse-rnn.toml",
            &[
                "--set",
                "model.attention=bahdanau",
                "--set",
                "model.conditional=true",
            ],
            1,
        ),
        (
            "configs/reverse-rnn.toml",
            &["--set", "model.attention=luong_dot"],
            1,
        ),
        (
            "configs/reverse-rnn.toml",
            &[
                "--set",
                "model.attention=luong_general",
                "--set",
                "model.input_feeding=false",
            ],
            1,
        ),
        (
            "configs/reverse-rnn.toml",
            &[
                "--set",
                "model.attention=luong_concat",
                "--set",
                "model.cell=lstm",
            ],
            1,
        ),
        ("configs/reverse-conv.toml", &[], 3),
    ];
    for (i, (config, extra, panels)) in cases.into_iter().enumerate() {
        let run = dir.path().join(format!("run{i}")).display().to_string();
        train(false, config, &run, 20, extra);
        let resolved = std::fs::read_to_string(Path::new(&run).join("config.toml")).unwrap();
        for pair in extra.chunks(2) {
            let (key, value) = pair[1].split_once('=').unwrap();
            let key = key.trim_start_matches("model.");
            assert!(
                resolved.contains(&format!("{key} = \"{value}\""))
                    || resolved.contains(&format!("{key} = {value}")),
                "{key} = {value} not in\n{resolved}"
            );
        }
        assert!(Path::new(&run).join("report.html").exists());
        let out = ok(wick_on(
            false,
            &[
                "translate",
                "--run",
                &run,
                "--beam",
                "3",
                "--n-best",
                "2",
                "c a f e",
            ],
        ));
        assert_eq!(out.lines().count(), 2, "two hypotheses:\n{out}");
        ok(wick_on(false, &["evaluate", "--run", &run, "--beam", "2"]));
        ok(wick_on(false, &["average", "--run", &run, "--last", "2"]));
        let svg = dir.path().join(format!("att{i}.svg")).display().to_string();
        let json = dir
            .path()
            .join(format!("att{i}.json"))
            .display()
            .to_string();
        ok(wick_on(
            false,
            &[
                "translate",
                "--run",
                &run,
                "--attention",
                &svg,
                "--attention-json",
                &json,
                "d c b a",
            ],
        ));
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let map: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let layers = map["layers"].as_array().unwrap();
        assert_eq!(layers.len(), panels, "{config} {extra:?}");
        assert_eq!(layers[0].as_array().unwrap().len(), 1, "one head");
    }
}

#[test]
fn keys_of_another_architecture_are_refused_with_their_name() {
    let out = wick_on(
        false,
        &[
            "train",
            "--config",
            "configs/reverse.toml",
            "--set",
            "model.attention=luong_dot",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("model.attention") && err.contains("arch = \"rnn\""),
        "{err}"
    );
    let out = wick_on(
        false,
        &[
            "train",
            "--config",
            "configs/reverse-rnn.toml",
            "--set",
            "model.attention=luong",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("luong_dot") && err.contains("bahdanau"),
        "{err}"
    );
    let out = wick_on(
        false,
        &[
            "train",
            "--config",
            "configs/reverse-conv.toml",
            "--set",
            "model.kernel_size=4",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("model.kernel_size") && err.contains("odd"),
        "{err}"
    );
}
