//! `manifest.json`: what a run was trained from (data hashes, seed, versions, device, ops).

use serde::Serialize;

/// The run's provenance, written once when training starts.
#[derive(Serialize)]
pub(super) struct Manifest {
    pub(super) wick_version: &'static str,
    /// `model.arch`.
    pub(super) arch: String,
    /// Which ops trained the run: `kernels` (wick's CPU kernels) or `reference` (composed
    /// Candle ops: GPUs, or `WICK_REFERENCE_OPS=1`).
    pub(super) ops: &'static str,
    pub(super) git_commit: Option<String>,
    pub(super) seed: u64,
    pub(super) device: String,
    pub(super) config_source: String,
    pub(super) data: Vec<DataFile>,
    pub(super) synthetic: Option<String>,
    pub(super) train_pairs: usize,
    /// Training pairs dropped for being longer than `data.max_len` tokens.
    pub(super) train_pairs_dropped: usize,
    /// Lines dropped under `data.on_bad_line = "skip"`, with file, line and reason.
    pub(super) bad_lines: Vec<wick_data::BadLine>,
    pub(super) dev_pairs: usize,
    /// Dev and test sources that are also training sources (leakage inflates their scores).
    pub(super) dev_sources_in_train: usize,
    pub(super) test_sources_in_train: Option<usize>,
    pub(super) vocab_src: usize,
    pub(super) vocab_tgt: usize,
    pub(super) params: usize,
    pub(super) created_unix: u64,
}

#[derive(Serialize)]
pub(super) struct DataFile {
    pub(super) split: &'static str,
    pub(super) path: String,
    pub(super) sha256: String,
}

/// Records in `manifest.json` that a resumed session trained with `ops`: a run trained on
/// both paths says `kernels+reference`. A manifest that cannot be read is left alone (runs
/// made before the field existed still resume).
pub(super) fn note_ops(run_dir: &std::path::Path, ops: &str) -> anyhow::Result<()> {
    let path = run_dir.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(mut manifest)) = serde_json::from_str(&text) else {
        return Ok(());
    };
    let now = match manifest.get("ops").and_then(|v| v.as_str()) {
        None => ops.to_string(),
        Some(before) if before.split('+').any(|p| p == ops) => return Ok(()),
        Some(before) => {
            let mut all: Vec<&str> = before.split('+').chain([ops]).collect();
            all.sort();
            all.join("+")
        }
    };
    manifest.insert("ops".into(), now.into());
    crate::checkpoint::write_atomic(
        &path,
        serde_json::to_string_pretty(&serde_json::Value::Object(manifest))?.as_bytes(),
    )
}
