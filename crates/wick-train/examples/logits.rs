//! Teacher-forced logits of a run's model for given token ids: what an exported model must
//! reproduce (`scripts/check_export.sh` holds the transformers export to them).
//!
//! ```text
//! cargo run --release -p wick-train --example logits -- RUN_DIR INPUT.json OUTPUT.safetensors
//! ```
//!
//! INPUT.json is `{"src": [[…]], "src_mask": [[…]], "tgt_in": [[…]]}`: source ids with `</s>`
//! and right padding (mask 1 on real tokens, 0 on padding), target inputs starting with `<s>`,
//! all rows of one length per field. OUTPUT gets `logits`, `(b, t, V)` float32.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use wick_model::Seq2Seq;
use wick_train::run::{Run, Which};

fn rows(value: &serde_json::Value, key: &str) -> Result<Vec<Vec<f64>>> {
    let parsed: Vec<Vec<f64>> = serde_json::from_value(value[key].clone())
        .with_context(|| format!("INPUT.json: `{key}` must be a list of lists of numbers"))?;
    if parsed.is_empty() || parsed.iter().any(|r| r.len() != parsed[0].len()) {
        bail!("INPUT.json: `{key}` needs rows of one length")
    }
    Ok(parsed)
}

fn tensor_u32(rows: &[Vec<f64>]) -> Result<Tensor> {
    let flat: Vec<u32> = rows.iter().flatten().map(|&x| x as u32).collect();
    Ok(Tensor::from_vec(
        flat,
        (rows.len(), rows[0].len()),
        &Device::Cpu,
    )?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [run_dir, input, output] = args.as_slice() else {
        bail!("usage: logits RUN_DIR INPUT.json OUTPUT.safetensors")
    };
    let run = Run::open(run_dir.as_ref())?;
    let model = run.load_model(&Which::Best, &Device::Cpu)?;
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{input}: not JSON"))?;
    let src = tensor_u32(&rows(&value, "src")?)?;
    let mask = rows(&value, "src_mask")?;
    let flat: Vec<f32> = mask.iter().flatten().map(|&x| x as f32).collect();
    let src_mask = Tensor::from_vec(flat, (mask.len(), mask[0].len()), &Device::Cpu)?;
    let tgt_in = tensor_u32(&rows(&value, "tgt_in")?)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let logits = model.forward_t(&memory, &tgt_in, false)?;
    candle_core::safetensors::save(&HashMap::from([("logits".to_string(), logits)]), output)?;
    Ok(())
}
