//! `wick translate`: sentences given as arguments, or stdin line by line; `--attention` draws
//! what one translation attended to.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use wick_train::Translator;
use wick_train::device::parse_device;
use wick_train::run::Run;

use crate::args::TranslateArgs;
use crate::plot::{Panels, draw};

pub(crate) fn cmd_translate(a: TranslateArgs) -> Result<()> {
    let device = parse_device(&a.run.device)?;
    let mut run = Run::open(&a.run.run)?;
    a.decode.apply(&mut run.config)?;
    let translator = Translator::from_run(&run.dir, a.run.checkpoint.clone(), &device)?
        .with_decoding(run.config.decode.clone())?
        .with_weights(a.decode.weights())?;
    if a.attention.is_some() || a.attention_json.is_some() {
        return translate_with_attention(&a, &translator);
    }
    let nbest_format = a.decode.n_best.is_some() || run.config.decode.n_best > 1;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut done = 0usize;
    let mut emit = |lines: &[String]| -> Result<()> {
        if nbest_format {
            for (k, hyps) in translator.translate_nbest(lines)?.into_iter().enumerate() {
                for c in hyps {
                    writeln!(out, "{}\t{:.4}\t{}", done + k, c.score, c.text)?;
                }
            }
        } else {
            for t in translator.translate(lines)? {
                writeln!(out, "{t}")?;
            }
        }
        done += lines.len();
        out.flush()?;
        Ok(())
    };
    if !a.text.is_empty() {
        return emit(&a.text);
    }
    let stdin = std::io::stdin();
    // Interactive input is translated line by line; piped input in batches.
    let chunk = if stdin.is_terminal() { 1 } else { 2000 };
    let mut pending = Vec::new();
    for (i, line) in stdin.lock().lines().enumerate() {
        pending.push(line.with_context(|| format!("stdin line {}: not valid UTF-8 text", i + 1))?);
        if pending.len() >= chunk {
            emit(&pending)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        emit(&pending)?;
    }
    Ok(())
}

/// `translate --attention/--attention-json`: one sentence, its translation on stdout and
/// the attention written where asked.
fn translate_with_attention(a: &TranslateArgs, translator: &Translator) -> Result<()> {
    let [sentence] = a.text.as_slice() else {
        bail!(
            "--attention and --attention-json draw one sentence: give exactly one as an argument (got {})",
            a.text.len()
        )
    };
    let map = translator.attention(sentence)?;
    if let Some(path) = &a.attention_json {
        wick_train::checkpoint::write_atomic(path, serde_json::to_string(&map)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("attention weights: {}", path.display());
    }
    if let Some(path) = &a.attention {
        let panels = match a.heads {
            Some(layer) => Panels::HeadsOf(layer),
            None => Panels::LayerMeans,
        };
        draw(&map, panels, path)?;
        eprintln!("attention plot: {}", path.display());
    }
    println!("{}", map.translation);
    Ok(())
}
