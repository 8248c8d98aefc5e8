//! The `wick` binary end to end: a small training run, evaluate and translate on its run
//! directory, and clear errors (non-zero exit, no panic) for bad input.
//!
//! Longer than most files on purpose: one training run serves every command checked after it,
//! and the bad-input cases are a list read best in one place.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn wick(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("wick runs")
}

fn wick_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with the message; asserts it is an error, not a panic.
fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        err.starts_with("error: ") || err.contains("\nerror: ") || err.contains("error:"),
        "{err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn train_evaluate_translate_on_a_small_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let run_s = run.to_str().expect("utf8");
    let o = wick(&[
        "train",
        "--config",
        "configs/reverse.toml",
        "--run-dir",
        run_s,
        "--set",
        "train.max_steps=30",
        "--set",
        "train.warmup_steps=10",
        "--set",
        "train.validate_every=15",
        "--set",
        "data.synthetic.n_train=600",
        "--set",
        "data.synthetic.n_test=40",
        "--samples",
        "2",
    ]);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    for f in [
        "config.toml",
        "tokenizer.json",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
        "trainer_state.json",
        "manifest.json",
        "metrics.jsonl",
        "progress.jsonl",
        "report.html",
        "curves.svg",
    ] {
        assert!(run.join(f).is_file(), "run directory lacks {f}");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .count(),
        2
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).expect("m"))
            .expect("json");
    assert_eq!(manifest["seed"], 1);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("BLEU = ") && stdout.contains("sample translations"),
        "{stdout}"
    );

    let o = wick(&["evaluate", "--run", run_s, "--json", "--checkpoint", "last"]);
    assert!(o.status.success(), "evaluate failed: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in [
        "bleu",
        "chrf",
        "signature",
        "exact_match",
        "n_sentences",
        "hyp_file",
        "ref_ppl",
        "ref_token_acc",
    ] {
        assert!(
            report.get(key).is_some(),
            "evaluate --json lacks {key}: {report}"
        );
    }
    assert_eq!(report["n_sentences"], 40);
    let ppl = report["ref_ppl"].as_f64().unwrap_or(0.0);
    assert!(ppl >= 1.0 && ppl.is_finite(), "reference perplexity {ppl}");
    let hyp_file = PathBuf::from(report["hyp_file"].as_str().expect("path"));
    assert_eq!(
        std::fs::read_to_string(hyp_file)
            .expect("hyps")
            .lines()
            .count(),
        40
    );

    let o = wick(&["translate", "--run", run_s, "a b c", "d e"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    let o = wick_stdin(&["translate", "--run", run_s], "a b\n\nc d e f\ng\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        4,
        "one output line per input line"
    );

    let o = wick(&[
        "translate",
        "--run",
        run_s,
        "--beam",
        "3",
        "--n-best",
        "3",
        "a b c",
        "d e",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 6, "3 hypotheses per input: {lines:?}");
    let scores: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        lines[..3].iter().all(|l| l.starts_with("0\t"))
            && lines[3..].iter().all(|l| l.starts_with("1\t"))
    );
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "n-best not sorted: {scores:?}"
    );
    fails_with(
        &wick(&["translate", "--run", run_s, "--n-best", "2", "a"]),
        &["decode.n_best", "beam"],
    );

    // Confidence intervals and length buckets come with every evaluation.
    let ci = &report["bleu_ci"];
    let (low, high, bleu) = (
        ci["low"].as_f64().unwrap(),
        ci["high"].as_f64().unwrap(),
        report["bleu"].as_f64().unwrap(),
    );
    assert!(low <= high && ci["resamples"] == 1000, "{ci}");
    assert!(
        low <= bleu + 1e-9 && bleu <= high + 1e-9 || low == high,
        "{ci} vs {bleu}"
    );
    let buckets = report["by_length"].as_array().expect("by_length");
    let counted: u64 = buckets
        .iter()
        .map(|b| b["n_sentences"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 40, "every sentence in one bucket: {buckets:?}");

    // n-best lists from evaluate.
    let o = wick(&[
        "evaluate", "--run", run_s, "--json", "--beam", "3", "--n-best", "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let nbest = std::fs::read_to_string(report["nbest_file"].as_str().expect("nbest_file"))
        .expect("nbest file");
    assert!(nbest.lines().count() > 40 && nbest.lines().count() <= 80);

    // Attention: the JSON has one row per output token (and `</s>`) that sums to 1, the
    // pictures are real SVG and PNG files.
    let json_path = dir.path().join("att.json");
    let svg_path = dir.path().join("att.svg");
    let png_path = dir.path().join("att.png");
    let o = wick(&[
        "translate",
        "--run",
        run_s,
        "--attention",
        svg_path.to_str().unwrap(),
        "--attention-json",
        json_path.to_str().unwrap(),
        "a b c d",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let (n_src, n_tgt) = (
        map["src_tokens"].as_array().unwrap().len(),
        map["tgt_tokens"].as_array().unwrap().len(),
    );
    assert_eq!(n_src, 5, "4 letters and </s>: {map}");
    let layers = map["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for head in layers.iter().flat_map(|l| l.as_array().unwrap()) {
        let rows = head.as_array().unwrap();
        assert_eq!(rows.len(), n_tgt);
        for row in rows {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(row.len(), n_src);
            let sum: f64 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "attention row sums to {sum}");
        }
    }
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("layer 2"),
        "{svg:.200}"
    );
    let o = wick(&[
        "translate",
        "--run",
        run_s,
        "--attention",
        png_path.to_str().unwrap(),
        "--heads",
        "1",
        "a b",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&png_path).unwrap().starts_with(b"\x89PNG"));
    for (extra, needles) in [
        (&["x.svg", "a", "b"][..], &["exactly one"][..]),
        (&["x.gif", "a"], &["x.gif", ".svg or .png"]),
        (&["x.svg", "--heads", "3", "a"], &["--heads 3", "1 to 2"]),
    ] {
        let mut args = vec!["translate", "--run", run_s, "--attention"];
        args.extend(extra);
        fails_with(&wick(&args), needles);
    }

    let o = wick(&[
        "bench", "decode", "--run", run_s, "--limit", "8", "--beam", "2", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let timings: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(timings.as_array().unwrap().len(), 3, "{timings}");

    // The index lists the kept validation checkpoints; averaging two gives their mean.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/index.json")).unwrap())
            .unwrap();
    let steps: Vec<u64> = index["by_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [30, 15], "{index}");
    let o = wick(&["average", "--run", run_s, "--last", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let load = |name: &str| {
        wick_train::checkpoint::load(
            &run.join("checkpoints").join(name),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .0
    };
    let (a, b, avg) = (
        load("step-15.safetensors"),
        load("step-30.safetensors"),
        load("avg-last-2.safetensors"),
    );
    assert_eq!(avg.len(), a.len());
    for (name, t) in &avg {
        let t = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = a[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..t.len() {
            let want = ((x[i] as f64 + y[i] as f64) / 2.0) as f32;
            assert_eq!(t[i], want, "{name}[{i}]");
        }
    }
    let o = wick(&[
        "evaluate",
        "--run",
        run_s,
        "--checkpoint",
        "avg-last-2.safetensors",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        report["hyp_file"]
            .as_str()
            .unwrap()
            .ends_with("hyp.test.avg-last-2.txt")
    );
    fails_with(
        &wick(&["average", "--run", run_s, "--best", "5"]),
        &["only 2 validation checkpoints", "keep_best"],
    );

    // The run directory is complete without the config file or the data that made it.
    let o = wick(&["evaluate", "--run", run_s, "--split", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let run_dir = |n: &str| d.join(n).to_str().expect("utf8").to_string();

    fails_with(&wick(&["train", "--config", "nope.toml"]), &["nope.toml"]);

    let bad_key = d.join("bad.toml");
    std::fs::write(&bad_key, "[train]\nmax_stepz = 3\n").expect("w");
    fails_with(
        &wick(&["train", "--config", bad_key.to_str().expect("p")]),
        &["bad.toml", "max_stepz"],
    );

    fails_with(
        &wick(&[
            "train",
            "--set",
            "model.n_heads=3",
            "--run-dir",
            &run_dir("r1"),
        ]),
        &["model.d_model", "divisible"],
    );

    let missing = d.join("missing.tsv");
    fails_with(
        &wick(&[
            "train",
            "--set",
            &format!("data.train=\"{}\"", missing.display()),
            "--run-dir",
            &run_dir("r2"),
        ]),
        &["missing.tsv"],
    );

    let bad_tsv = d.join("bad.tsv");
    std::fs::write(&bad_tsv, "hello\tbonjour\njust one column\n").expect("w");
    fails_with(
        &wick(&[
            "train",
            "--set",
            &format!("data.train=\"{}\"", bad_tsv.display()),
            "--run-dir",
            &run_dir("r3"),
        ]),
        &["bad.tsv:2", "tab"],
    );

    let (en, fr) = (d.join("x.en"), d.join("x.fr"));
    std::fs::write(&en, "a\nb\nc\n").expect("w");
    std::fs::write(&fr, "a\nb\n").expect("w");
    let files = format!(
        "data.train={{ src = \"{}\", tgt = \"{}\" }}",
        en.display(),
        fr.display()
    );
    fails_with(
        &wick(&["train", "--set", &files, "--run-dir", &run_dir("r4")]),
        &["x.en", "x.fr", "3 lines"],
    );

    let latin1 = d.join("latin1.tsv");
    std::fs::write(&latin1, b"ok\tfine\ncaf\xe9\tcafe\n").expect("w");
    fails_with(
        &wick(&[
            "train",
            "--set",
            &format!("data.train=\"{}\"", latin1.display()),
            "--run-dir",
            &run_dir("r5"),
        ]),
        &["latin1.tsv:2", "UTF-8"],
    );

    fails_with(
        &wick(&["evaluate", "--run", d.to_str().expect("p")]),
        &["not a wick run directory"],
    );
    fails_with(
        &wick(&["translate", "--run", &run_dir("nothing-here"), "hi"]),
        &["no such run directory"],
    );
    fails_with(
        &wick(&["train", "--device", "cuda", "--run-dir", &run_dir("r6")]),
        &["--features cuda"],
    );
    fails_with(
        &wick(&["train", "--device", "tpu", "--run-dir", &run_dir("r7")]),
        &["tpu"],
    );

    let empty_ref = d.join("ref.txt");
    let hyp = d.join("hyp.txt");
    std::fs::write(&empty_ref, "a\nb\n").expect("w");
    std::fs::write(&hyp, "a\n").expect("w");
    fails_with(
        &wick(&[
            "score",
            "--ref",
            empty_ref.to_str().expect("p"),
            "--hyp",
            hyp.to_str().expect("p"),
        ]),
        &["ref.txt", "2 lines"],
    );
}

#[test]
fn score_matches_sacrebleu_known_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("ref.txt");
    let h = dir.path().join("hyp.txt");
    std::fs::write(&r, "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau liest ein Buch im Park.\n").expect("w");
    std::fs::write(
        &h,
        "Ein Mann fährt ein Fahrrad.\nZwei Hunde spielen im Schnee.\nEine Frau liest im Park.\n",
    )
    .expect("w");
    let o = wick(&[
        "score",
        "--ref",
        r.to_str().expect("p"),
        "--hyp",
        h.to_str().expect("p"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(format!("{:.2}", v["bleu"].as_f64().expect("bleu")), "58.56");
    assert_eq!(format!("{:.2}", v["chrf"].as_f64().expect("chrf")), "81.87");
}

#[test]
fn bench_presets_run_fixed_shapes() {
    // Decoding never stops early: every sentence gets exactly --steps tokens, in both modes.
    let o = wick(&[
        "bench",
        "decode",
        "--preset",
        "tiny",
        "--batch-size",
        "3",
        "--src-len",
        "5",
        "--steps",
        "4",
        "--beam",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let timings: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let modes: Vec<&str> = timings
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["greedy", "beam2"]);
    for t in timings.as_array().unwrap() {
        assert_eq!(t["output_tokens"], 12, "{t}");
        assert!(t["sentences_per_s"].as_f64().unwrap() > 0.0);
    }
    // --run and --preset exclude each other; one of them is needed.
    assert!(!wick(&["bench", "decode"]).status.success());
    assert!(
        !wick(&["bench", "decode", "--preset", "tiny", "--run", "x"])
            .status
            .success()
    );

    let o = wick(&[
        "bench",
        "train",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--src-len",
        "3",
        "--tgt-len",
        "3",
        "--steps",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["params"], 1_949_696);
    for key in [
        "tgt_tokens_per_s",
        "ms_per_step",
        "gradients_ms",
        "update_ms",
    ] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    // Two sentences: the trainer's two shards, one sentence each.
    assert_eq!(r["shards"], 2);

    // The step's products: 11 linear maps (tiny: 2+2 layers) × forward, dX, dW, with the token
    // counts of the batch; they cover the step's FLOPs except the attention core.
    let o = wick(&[
        "bench",
        "matmul",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--src-len",
        "3",
        "--tgt-len",
        "5",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let products = r["products"].as_array().unwrap();
    assert_eq!(products.len(), 33);
    let out = products
        .iter()
        .find(|p| p["name"] == "output projection")
        .unwrap();
    assert_eq!(
        (&out["m"], &out["k"], &out["n"]),
        (&10.into(), &128.into(), &8000.into())
    );
    let qkv_dw = products
        .iter()
        .find(|p| p["name"] == "encoder qkv dW")
        .unwrap();
    assert_eq!(
        (&qkv_dw["m"], &qkv_dw["k"], &qkv_dw["n"]),
        (&384.into(), &6.into(), &128.into())
    );
    assert_eq!(qkv_dw["count"], 2);
    // Attention core, 3 × forward: encoder 4·b·s²·d per layer, decoder 4·b·(t² + t·s)·d.
    let (b, s, t, d) = (2.0, 3.0, 5.0, 128.0);
    let attention = 3.0 * 2.0 * (4.0 * b * s * s * d + 4.0 * b * (t * t + t * s) * d);
    let linear: f64 = products
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().unwrap();
            2.0 * f("m") * f("k") * f("n") * f("count")
        })
        .sum();
    let share = r["share_of_step_flops"].as_f64().unwrap();
    assert!(
        (share - linear / (linear + attention)).abs() < 1e-9,
        "{share}"
    );
    assert!(r["total_ms"].as_f64().unwrap() > 0.0);
}
