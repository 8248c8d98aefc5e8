//! Hostile and messy input through the `wick` binary: every case gives a clear error naming
//! the file (and line) and a non-zero exit, or is handled as documented — never a panic or a
//! hang, never a half-written checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn wick_in(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wick runs");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts a clean failure: non-zero exit, no panic, and every needle in the message.
fn fails_with(o: &Output, needles: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "expected failure, got success: {t}");
    assert!(!t.contains("panicked"), "wick panicked: {t}");
    for n in needles {
        assert!(t.contains(n), "error should mention {n:?}: {t}");
    }
}

fn succeeds(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "wick failed: {t}");
    t
}

/// 300 clean, distinct pairs.
fn clean_lines() -> Vec<String> {
    (0..300)
        .map(|i| {
            format!(
                "the {} cat saw {} dogs\tle chat {} a vu {} chiens",
                i % 7,
                i,
                i % 7,
                i
            )
        })
        .collect()
}

/// A tiny config training on `train` (dev and test: `dev`), a few steps.
fn config(dir: &Path, train: &str, dev: &str, extra: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            r#"[data]
train = "{train}"
dev = "{dev}"
test = "{dev}"
vocab_size = 300
min_frequency = 1
max_len = 30
{extra}
[model]
d_model = 16
n_heads = 2
encoder_layers = 1
decoder_layers = 1
d_ff = 32
max_positions = 64

[train]
max_steps = 4
max_epochs = 0
max_minutes = 0
batch_tokens = 400
warmup_steps = 2
validate_every = 2
valid_max_sentences = 10
"#
        ),
    )
    .unwrap();
    path
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut dev = clean_lines()[..20].join("\n");
        dev.push('\n');
        std::fs::write(dir.join("dev.tsv"), dev).unwrap();
        Self { _tmp: tmp, dir }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// `wick train` on `train` with extra `[data]` lines, in run directory `run`.
    fn train(&self, train: &str, data_extra: &str, run: &str, sets: &[&str]) -> Output {
        let cfg = config(&self.dir, train, "dev.tsv", data_extra);
        let mut args = vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--run-dir",
            run,
            "--samples",
            "0",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        wick_in(&self.dir, &args, None)
    }

    fn run(&self, args: &[&str]) -> Output {
        wick_in(&self.dir, args, None)
    }
}

fn clean_tsv() -> Vec<u8> {
    let mut t = clean_lines().join("\n");
    t.push('\n');
    t.into_bytes()
}

#[test]
fn truncated_gzip_is_a_read_error_naming_the_file() {
    let f = Fixture::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&clean_tsv()).unwrap();
    let bytes = gz.finish().unwrap();
    f.write("train.tsv.gz", &bytes[..bytes.len() / 2]);
    let o = f.train("train.tsv.gz", "", "r", &[]);
    fails_with(&o, &["train.tsv.gz", "read error"]);
    assert_eq!(
        text(&o).matches("incomplete").count(),
        1,
        "cause printed once: {}",
        text(&o)
    );
    assert!(
        !f.dir.join("r").exists(),
        "a failed start leaves no run directory"
    );
    fails_with(
        &f.run(&["data", "check", "--tsv", "train.tsv.gz"]),
        &["train.tsv.gz", "ERROR"],
    );
    // The whole file reads.
    f.write("whole.tsv.gz", &bytes);
    succeeds(&f.train("whole.tsv.gz", "", "r2", &[]));
}

#[test]
fn crlf_and_bom_are_read_as_plain_lines() {
    let f = Fixture::new();
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(
        String::from_utf8(clean_tsv())
            .unwrap()
            .replace('\n', "\r\n")
            .bytes(),
    );
    f.write("crlf.tsv", &bytes);
    let t = succeeds(&f.run(&["data", "check", "--tsv", "crlf.tsv"]));
    assert!(t.contains("300 lines, 300 usable pairs"), "{t}");
    assert!(!t.contains("control"), "{t}");
    succeeds(&f.train("crlf.tsv", "", "r", &[]));
    // The tokenizer never saw a BOM or a carriage return.
    let tok = std::fs::read_to_string(f.dir.join("r/tokenizer.json")).unwrap();
    assert!(
        !tok.contains("\\ufeff") && !tok.contains("\\r"),
        "BOM/CR in vocabulary"
    );
}

#[test]
fn nul_bytes_and_bad_lines_follow_the_policy() {
    let f = Fixture::new();
    let mut bytes = clean_tsv();
    bytes.extend(b"bad\0line\tligne\n\ttarget only\nno tab here\ncaf\xe9\tcafe\n");
    bytes.extend(clean_tsv());
    f.write("messy.tsv", &bytes);
    // Default policy: the first bad line stops training, naming file and line.
    fails_with(
        &f.train("messy.tsv", "", "r1", &[]),
        &["messy.tsv:301", "NUL byte", "on_bad_line"],
    );
    assert!(
        !f.dir.join("r1/checkpoints/last.safetensors").exists(),
        "no checkpoint from rejected data"
    );
    // data check lists all four, and exits non-zero because training would refuse.
    let o = f.run(&["data", "check", "--tsv", "messy.tsv", "--json"]);
    assert!(!o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &report["splits"][0];
    assert_eq!(s["pairs"], 600);
    assert_eq!(s["control_characters"]["lines"], serde_json::json!([301]));
    assert_eq!(s["empty_side"]["lines"], serde_json::json!([302]));
    assert_eq!(s["wrong_columns"]["lines"], serde_json::json!([303]));
    assert_eq!(s["invalid_utf8"]["lines"], serde_json::json!([304]));
    assert_eq!(s["duplicate_pairs"]["count"], 300);
    // With skip it trains, and says what it dropped; the manifest records every line.
    let t = succeeds(&f.train("messy.tsv", "on_bad_line = \"skip\"", "r2", &[]));
    assert!(t.contains("dropped 4 of 604 lines"), "{t}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir.join("r2/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["bad_lines"].as_array().unwrap().len(), 4);
    // data check honours the policy too.
    succeeds(&f.run(&[
        "data",
        "check",
        "--tsv",
        "messy.tsv",
        "--set",
        "data.on_bad_line=\"skip\"",
    ]));
}

#[test]
fn a_ten_megabyte_line_is_dropped_quickly_and_translates_without_hanging() {
    let f = Fixture::new();
    let start = std::time::Instant::now();
    let mut bytes = clean_tsv();
    let huge = "word ".repeat(2_000_000); // 10 MB
    bytes.extend(format!("{huge}\tmot\n").bytes());
    bytes.extend(format!("x\t{}\n", "y".repeat(10_000_000)).bytes()); // 10 MB, no spaces
    f.write("huge.tsv", &bytes);
    let t = succeeds(&f.run(&["data", "check", "--tsv", "huge.tsv"]));
    assert!(t.contains("longer than data.max_len"), "{t}");
    let t = succeeds(&f.train("huge.tsv", "", "r", &[]));
    assert!(t.contains("2 dropped"), "{t}");
    let o = wick_in(&f.dir, &["translate", "--run", "r"], Some(huge.as_bytes()));
    succeeds(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(90),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn foreign_tokenizers_and_broken_checkpoints_are_clear_errors() {
    let f = Fixture::new();
    f.write("train.tsv", &clean_tsv());
    succeeds(&f.train("train.tsv", "", "r", &[]));
    // Another run with a different model size.
    succeeds(&f.train(
        "train.tsv",
        "",
        "other",
        &["model.d_model=32", "model.d_ff=64"],
    ));

    // A checkpoint of another shape, and one that does not exist.
    for (checkpoint, needle) in [
        ("other/checkpoints/best.safetensors", "does not fit"),
        ("step-999.safetensors", "no such checkpoint"),
    ] {
        fails_with(
            &f.run(&["evaluate", "--run", "r", "--checkpoint", checkpoint]),
            &[checkpoint, needle],
        );
    }

    // Truncated and garbage checkpoints.
    let best = f.dir.join("r/checkpoints/best.safetensors");
    let bytes = std::fs::read(&best).unwrap();
    let copy = f.dir.join("r/checkpoints/truncated.safetensors");
    std::fs::write(&copy, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(
        &f.run(&[
            "evaluate",
            "--run",
            "r",
            "--checkpoint",
            "truncated.safetensors",
        ]),
        &["truncated.safetensors"],
    );
    std::fs::write(&copy, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    fails_with(
        &f.run(&[
            "translate",
            "--run",
            "r",
            "--checkpoint",
            "truncated.safetensors",
            "hi",
        ]),
        &["truncated.safetensors", "safetensors"],
    );

    // A tokenizer.json from elsewhere: a valid tokenizers file without wick's specials, and
    // one that is not JSON.
    let tok = f.dir.join("r/tokenizer.json");
    std::fs::write(
        &tok,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    fails_with(
        &f.run(&["translate", "--run", "r", "hello"]),
        &["tokenizer.json"],
    );
    std::fs::write(&tok, b"<html>404</html>").unwrap();
    fails_with(&f.run(&["evaluate", "--run", "r"]), &["tokenizer.json"]);
    // The other run's tokenizer has the same specials but belongs to another run: fine if the
    // vocabulary sizes agree (same data, same settings), which they do here.
    std::fs::copy(f.dir.join("other/tokenizer.json"), &tok).unwrap();
    succeeds(&f.run(&["translate", "--run", "r", "hello"]));
}

#[test]
fn diverging_training_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let f = Fixture::new();
    f.write("train.tsv", &clean_tsv());
    let blow_up = [
        "train.lr=1e30",
        "train.adam_eps=1e-30",
        "train.schedule=\"constant\"",
        "train.warmup_steps=0",
        "train.clip_norm=0",
        "train.validate_every=1",
        "train.max_steps=50",
    ];
    let o = f.train("train.tsv", "", "r", &blow_up);
    fails_with(&o, &["at step", "skip_nonfinite"]);
    // Whatever was saved before the failure is a complete, finite checkpoint.
    let last = f.dir.join("r/checkpoints/last.safetensors");
    if last.exists() {
        let (tensors, _) = wick_train::checkpoint::load(&last, &candle_core::Device::Cpu).unwrap();
        for (name, t) in tensors {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name} is not finite");
        }
    }
    // Skipping gives up after 10 bad updates in a row.
    let mut sets = blow_up.to_vec();
    sets.push("train.skip_nonfinite=true");
    fails_with(
        &f.train("train.tsv", "", "r2", &sets),
        &["10 updates in a row", "update skipped"],
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_reported_and_the_previous_checkpoint_survives() {
    let f = Fixture::new();
    f.write("train.tsv", &clean_tsv());
    succeeds(&f.train("train.tsv", "", "r", &[]));
    let resume = f.dir.join("r/checkpoints/resume.safetensors");
    let before = std::fs::read(&resume).unwrap();
    // A file-size limit below the checkpoint size makes the next checkpoint write fail
    // with EFBIG, as a full disk fails with ENOSPC.
    let limit_kb = before.len() / 1024 / 2;
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f {limit_kb}; exec \"$0\" train --resume r --set train.max_steps=8 --samples 0"
        ))
        .arg(env!("CARGO_BIN_EXE_wick"))
        .current_dir(&f.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with(&o, &["cannot write", "safetensors", "File too large"]);
    assert_eq!(
        std::fs::read(&resume).unwrap(),
        before,
        "the previous checkpoint changed"
    );
    let leftovers: Vec<String> = std::fs::read_dir(f.dir.join("r/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // The run resumes once there is room again.
    succeeds(&f.run(&[
        "train",
        "--resume",
        "r",
        "--set",
        "train.max_steps=8",
        "--samples",
        "0",
    ]));

    // An unwritable place for the run directory.
    fails_with(
        &f.train("train.tsv", "", "/proc/wick-run", &[]),
        &["/proc/wick-run"],
    );
}
