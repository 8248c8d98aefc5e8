//! `wick average`: the element-wise mean of several checkpoints of a run (checkpoint
//! averaging, Vaswani et al. 2017 §6.1), written as a new checkpoint `wick evaluate` can use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use crate::checkpoint;
use crate::run::{CheckpointEntry, CheckpointIndex, Run};

/// Which kept validation checkpoints to average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The K most recent.
    Last(usize),
    /// The K best by the run's `best_metric`.
    Best(usize),
}

impl Selection {
    fn name(self) -> String {
        match self {
            Selection::Last(k) => format!("avg-last-{k}.safetensors"),
            Selection::Best(k) => format!("avg-best-{k}.safetensors"),
        }
    }
}

/// Averages the selected checkpoints of `run` into `output` (default
/// `checkpoints/avg-last-K.safetensors` or `avg-best-K`); returns its path and the inputs.
pub fn average(
    run: &Run,
    selection: Selection,
    output: Option<PathBuf>,
) -> Result<(PathBuf, Vec<CheckpointEntry>)> {
    let index = CheckpointIndex::load(&run.dir)?;
    let (k, list, what) = match selection {
        Selection::Last(k) => (k, &index.by_step, "train.keep_last"),
        Selection::Best(k) => (k, &index.by_score, "train.keep_best"),
    };
    if k == 0 {
        bail!("nothing to average: K must be at least 1")
    }
    if list.len() < k {
        bail!(
            "{}: only {} validation checkpoints are kept, {k} asked for (raise {what}, or validate more often with train.validate_every)",
            run.dir
                .join("checkpoints")
                .join(CheckpointIndex::FILE)
                .display(),
            list.len()
        )
    }
    let chosen: Vec<CheckpointEntry> = list[..k].to_vec();
    let dir = run.dir.join("checkpoints");
    let mut sum: BTreeMap<String, Tensor> = BTreeMap::new();
    for (i, c) in chosen.iter().enumerate() {
        let path = dir.join(&c.file);
        let (tensors, _) = checkpoint::load(&path, &Device::Cpu)?;
        if i > 0 && (tensors.len() != sum.len() || tensors.keys().any(|k| !sum.contains_key(k))) {
            bail!(
                "{} holds different tensors from {}",
                path.display(),
                chosen[0].file
            )
        }
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F64)?;
            let acc = match sum.remove(&name) {
                Some(acc) => {
                    if acc.dims() != t.dims() {
                        bail!(
                            "{}: tensor {name} has shape {:?}, {} has {:?}",
                            path.display(),
                            t.dims(),
                            chosen[0].file,
                            acc.dims()
                        )
                    }
                    (acc + t)?
                }
                None => t,
            };
            sum.insert(name, acc);
        }
    }
    // Summed in f64 so the mean does not depend on the order of the checkpoints.
    let mean: BTreeMap<String, Tensor> = sum
        .into_iter()
        .map(|(n, t)| Ok((n, (t / k as f64)?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()?;
    let out = output.unwrap_or_else(|| dir.join(selection.name()));
    let mut meta = HashMap::new();
    meta.insert(
        "averaged_from".to_string(),
        chosen
            .iter()
            .map(|c| c.file.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    meta.insert("wick_version".into(), env!("CARGO_PKG_VERSION").to_string());
    checkpoint::save(&out, &mean, meta)
        .with_context(|| format!("writing the averaged checkpoint {}", out.display()))?;
    Ok((out, chosen))
}
