//! `wick export`: a run as a model directory for another engine.

use anyhow::Result;
use wick_train::export::{ExportRequest, export};

use crate::args::ExportArgs;

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
    let summary = export(&ExportRequest {
        run_dir: a.run,
        checkpoint: a.checkpoint,
        format: a.format,
        quantization: a.quantization,
        output: a.output,
        force: a.force,
    })?;
    eprintln!("exported {}", summary.checkpoint.display());
    for (name, bytes) in &summary.files {
        eprintln!("  {name:<24} {bytes:>12} bytes");
    }
    println!("{}", summary.output.display());
    println!(
        "serve it: see {}",
        summary.output.join("README.md").display()
    );
    Ok(())
}
