//! `wick score`: hypothesis files against references, like the `sacrebleu` command.

use anyhow::{Result, bail};
use wick_metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};

use crate::args::ScoreArgs;

pub(crate) fn cmd_score(a: ScoreArgs) -> Result<()> {
    let hyps = wick_data::corpus::read_lines(&a.hyp)?;
    let mut refs = Vec::new();
    for r in &a.refs {
        let lines = wick_data::corpus::read_lines(r)?;
        if lines.len() != hyps.len() {
            bail!(
                "{} has {} lines but the hypothesis file {} has {}",
                r.display(),
                lines.len(),
                a.hyp.display(),
                hyps.len()
            )
        }
        refs.push(lines);
    }
    let mut json = serde_json::Map::new();
    for m in &a.metrics {
        match m.trim().to_ascii_lowercase().as_str() {
            "bleu" => {
                let s = corpus_bleu(
                    &hyps,
                    &refs,
                    BleuOptions {
                        tokenize: a.tokenize,
                        lowercase: a.lowercase,
                    },
                );
                if !a.json {
                    println!(
                        "{} = {}",
                        s.signature,
                        s.format().trim_start_matches("BLEU = ")
                    );
                }
                json.insert("bleu".into(), s.score.into());
                json.insert("bleu_signature".into(), s.signature.clone().into());
                json.insert("precisions".into(), serde_json::to_value(s.precisions)?);
                json.insert("brevity_penalty".into(), s.brevity_penalty.into());
                json.insert("hyp_len".into(), s.hyp_len.into());
                json.insert("ref_len".into(), s.ref_len.into());
                json.insert("signature".into(), s.signature.into());
            }
            name @ ("chrf" | "chrf++") => {
                let word_order = if name == "chrf++" { 2 } else { 0 };
                let s = corpus_chrf(
                    &hyps,
                    &refs,
                    ChrfOptions {
                        word_order,
                        lowercase: a.lowercase,
                        ..Default::default()
                    },
                );
                if !a.json {
                    println!("{} = {:.2}", s.signature, s.score);
                }
                let key = if word_order > 0 { "chrf++" } else { "chrf" };
                json.insert(key.into(), s.score.into());
                json.insert(format!("{key}_signature"), s.signature.into());
            }
            other => bail!("--metrics: unknown metric `{other}` (expected bleu, chrf or chrf++)"),
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(())
}
