//! Crash safety: training is killed with SIGKILL at random moments (some of them in the
//! middle of a checkpoint write), resumed each time, and must finish with every checkpoint
//! on disk loadable and final weights bit-identical to an uninterrupted run.
//!
//! The default test kills 3 times; `scripts/crash_test.sh` runs the ignored long version
//! (`WICK_CRASH_KILLS`, default 12 kills).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const STEPS: usize = 150;

/// A small run that writes a checkpoint every update, so kills often land in a write.
fn settings() -> Vec<String> {
    [
        "data.synthetic.n_train=400",
        "data.synthetic.n_test=20",
        "data.synthetic.n_dev=50",
        "model.d_model=32",
        "model.d_ff=64",
        "model.dropout=0.2",
        "train.max_minutes=0",
        "train.warmup_steps=20",
        "train.batch_tokens=300",
        "train.validate_every=20",
        "train.checkpoint_every=1",
        "train.keep_best=2",
        "train.keep_last=2",
        &format!("train.max_steps={STEPS}"),
    ]
    .iter()
    .flat_map(|s| ["--set".to_string(), s.to_string()])
    .collect()
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wick")
}

fn fresh_args(run: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--config",
        "configs/reverse.toml",
        "--samples",
        "0",
        "--run-dir",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(settings());
    a
}

fn resume_args(run: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "--resume".into(),
        run.to_str().unwrap().into(),
        "--samples".into(),
        "0".into(),
    ]
}

fn finish(child: Child) {
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "training failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every safetensors file in `checkpoints/` loads; temporary files are not checkpoints.
fn all_checkpoints_load(run: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".safetensors") && !name.starts_with('.') {
            wick_train::checkpoint::load(&path, &candle_core::Device::Cpu)
                .unwrap_or_else(|e| panic!("{name} does not load after a kill: {e:#}"));
            n += 1;
        }
    }
    n
}

fn weights(path: &Path) -> Vec<(String, Vec<u32>)> {
    let (t, _) = wick_train::checkpoint::load(path, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = t
        .into_iter()
        .map(|(k, v)| {
            let bits = v
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect();
    out.sort();
    out
}

/// The step of the latest resume point.
fn step_on_disk(run: &Path) -> usize {
    std::fs::read_to_string(run.join("trainer_state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0) as usize
}

/// Waits until a temporary checkpoint file exists (a write in progress) or `limit` passes.
fn wait_for_write(run: &Path, limit: Duration) -> bool {
    let dir = run.join("checkpoints");
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let writing = entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
            if writing {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn crash_and_resume(kills: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    finish(spawn(&fresh_args(&straight)));

    let run = dir.path().join("crashed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut child = spawn(&fresh_args(&run));
    let resume_file = run.join("checkpoints/resume.safetensors");
    let start = Instant::now();
    while !resume_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut mid_write = 0;
    for k in 0..kills {
        // Kills are spread over the run: kill k waits for step ≈ (k+1)/(kills+1) of it (with
        // jitter), then either for a checkpoint write to start or a random moment.
        let target = (k + 1) * STEPS / (kills + 1) + rng.random_range(0..5);
        let start = Instant::now();
        while step_on_disk(&run) < target && start.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if k % 2 == 0 {
            if wait_for_write(&run, Duration::from_secs(5)) {
                mid_write += 1;
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before kill {}",
            k + 1
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let n = all_checkpoints_load(&run);
        eprintln!(
            "kill {}: at step {} on disk; {n} checkpoints, all load",
            k + 1,
            step_on_disk(&run)
        );
        child = spawn(&resume_args(&run));
    }
    finish(child);
    eprintln!("{kills} kills, {mid_write} while a checkpoint write was in progress");
    all_checkpoints_load(&run);
    assert_eq!(
        weights(&run.join("checkpoints/last.safetensors")),
        weights(&straight.join("checkpoints/last.safetensors")),
        "final weights differ from the uninterrupted run's"
    );
    assert_eq!(
        weights(&run.join("checkpoints/best.safetensors")),
        weights(&straight.join("checkpoints/best.safetensors")),
        "best checkpoint differs from the uninterrupted run's"
    );
    // The validation log has each validation once, as in the straight run.
    let log = |r: &Path| std::fs::read_to_string(r.join("metrics.jsonl")).unwrap();
    let steps = |t: String| -> Vec<u64> {
        t.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(steps(log(&run)), steps(log(&straight)));
    let index = |r: &Path| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(r.join("checkpoints/index.json")).unwrap(),
        )
        .unwrap();
        v["by_step"].clone()
    };
    let (a, b) = (index(&run), index(&straight));
    let files = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["file"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(files(&a), files(&b), "kept checkpoints differ");
}

#[test]
fn killed_and_resumed_training_equals_uninterrupted_training() {
    crash_and_resume(3, 7);
}

/// The long version for `scripts/crash_test.sh`.
#[test]
#[ignore = "long: run by scripts/crash_test.sh"]
fn many_kills() {
    let kills = std::env::var("WICK_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed = std::env::var("WICK_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    crash_and_resume(kills, seed);
}
