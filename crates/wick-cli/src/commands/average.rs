//! `wick average`: the mean of a run's last or best validation checkpoints.

use anyhow::{Result, bail};
use wick_train::run::Run;

use crate::args::AverageArgs;

pub(crate) fn cmd_average(a: AverageArgs) -> Result<()> {
    use wick_train::average::{Selection, average};
    let run = Run::open(&a.run)?;
    let selection = match (a.last, a.best) {
        (Some(k), _) => Selection::Last(k),
        (_, Some(k)) => Selection::Best(k),
        _ => bail!("give --last K or --best K"),
    };
    let (path, from) = average(&run, selection, a.output)?;
    for c in &from {
        eprintln!(
            "  {} (step {}, dev BLEU {:.2}, dev loss {:.3})",
            c.file, c.step, c.dev_bleu, c.dev_loss
        );
    }
    println!(
        "averaged {} checkpoints into {}",
        from.len(),
        path.display()
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    println!(
        "try: wick evaluate --run {} --checkpoint {name}",
        run.dir.display()
    );
    Ok(())
}
