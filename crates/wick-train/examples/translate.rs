//! Translates with a trained run through the library's `Translator`:
//!
//! ```text
//! cargo run --release -p wick-train --example translate -- RUN_DIR [--beam N] [SENTENCE ...]
//! cargo run --release -p wick-train --example translate -- runs/toy "How are you?"
//! cargo run --release -p wick-train --example translate -- runs/toy --beam 5 < input.txt
//! ```
//!
//! Without sentences it translates stdin, one line per sentence, and reports its speed on
//! stderr. Nothing else to set up: the translator lays the model out for decoding once and
//! runs on a thread pool of its own.

use std::io::BufRead;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use wick_train::{Translator, Which};

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        bail!("usage: translate RUN_DIR [--beam N] [SENTENCE ...]")
    }
    let run_dir = args.remove(0);
    let mut beam = None;
    if let Some(i) = args.iter().position(|a| a == "--beam") {
        let n = args.get(i + 1).context("--beam needs a number")?;
        beam = Some(n.parse::<usize>().context("--beam needs a number")?);
        args.drain(i..i + 2);
    }
    let mut translator = Translator::from_run(&run_dir, Which::Best, &Device::Cpu)?;
    if let Some(k) = beam {
        translator = translator.with_beam(k)?;
    }
    if !args.is_empty() {
        for line in translator.translate(&args)? {
            println!("{line}");
        }
        return Ok(());
    }
    let sources: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<std::io::Result<_>>()
        .context("reading stdin")?;
    let start = Instant::now();
    let out = translator.translate(&sources)?;
    let seconds = start.elapsed().as_secs_f64();
    for line in &out {
        println!("{line}");
    }
    eprintln!(
        "{} sentences in {seconds:.2} s ({:.1} sentences/s, beam {}, {} threads)",
        out.len(),
        out.len() as f64 / seconds.max(1e-9),
        translator.decoding().beam,
        translator.threads().unwrap_or(0)
    );
    Ok(())
}
