//! Trains a model from a config with the library, as `wick train` does:
//!
//! ```text
//! cargo run --release -p wick-train --example train -- CONFIG RUN_DIR [KEY=VALUE ...]
//! cargo run --release -p wick-train --example train -- configs/reverse.toml runs/reverse-lib train.max_steps=300
//! ```
//!
//! `KEY=VALUE` pairs override config keys, like `wick train --set`.

use anyhow::{Context, Result, bail};
use wick_train::{Config, TrainRequest, train};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(run_dir)) = (args.next(), args.next()) else {
        bail!("usage: train CONFIG RUN_DIR [KEY=VALUE ...]")
    };
    let overrides: Vec<String> = args.collect();
    let config = Config::load(config.as_ref(), &overrides)?;
    let summary = train(TrainRequest::new(config, &run_dir)).context("training failed")?;
    println!(
        "{} updates in {:.0} s ({:.0} target tokens/s); best checkpoint: step {} (dev BLEU {:.2}); {}",
        summary.steps,
        summary.seconds,
        summary.tgt_tokens_per_s,
        summary.best_step.unwrap_or(0),
        summary.best_dev_bleu.unwrap_or(0.0),
        summary.stop_reason
    );
    println!("run directory: {}", summary.run_dir.display());
    Ok(())
}
