//! What the binary-level tests share: running `wick` from the repository root, and reading
//! its outcome. Each test file uses part of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.env("RUST_BACKTRACE", "0")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .stdin(Stdio::null());
    cmd
}

/// `wick ARGS` from the repository root.
pub fn wick(args: &[&str]) -> Output {
    command(args).output().expect("wick runs")
}

/// `wick ARGS` on the kernel path, or on the composed reference path (what a GPU runs).
pub fn wick_on(reference: bool, args: &[&str]) -> Output {
    command(args)
        .env("WICK_REFERENCE_OPS", if reference { "1" } else { "0" })
        .output()
        .expect("wick runs")
}

/// The stdout of a run that must succeed.
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "wick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stderr of a run that must fail.
pub fn err(out: Output) -> String {
    assert!(!out.status.success(), "wick should have failed");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
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
