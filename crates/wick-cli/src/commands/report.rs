//! `wick report`: report.html and curves.svg of a run.

use anyhow::Result;
use wick_train::device::parse_device;
use wick_train::report::{ReportRequest, write_report};

use crate::args::ReportArgs;

pub(crate) fn cmd_report(a: ReportArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let files = write_report(ReportRequest {
        run_dir: &a.run,
        output: a.output,
        samples: a.samples,
        device: &device,
    })?;
    println!("report: {}", files.html.display());
    println!("curves: {}", files.curves.display());
    Ok(())
}
