//! `wick export`: hand a trained run to the engines translators are served with.
//!
//! ```text
//! run directory ──export(ctranslate2)──▶ OUT/
//!                                          model.bin            weights (CTranslate2 binary v6)
//!                                          config.json          special tokens, add_source_eos, ε
//!                                          shared_vocabulary.json (or source_/target_vocabulary.json)
//!                                          tokenizer.json       wick's tokenizer(s), to make the tokens
//!                                          README.md            how to serve it, wick's decoding defaults
//!                ──export(transformers)──▶ OUT/
//!                                          config.json, generation_config.json   MarianMTModel
//!                                          model.safetensors
//!                                          tokenizer.json, tokenizer_config.json, special_tokens_map.json
//!                                          README.md
//! ```
//!
//! The directory is written next to `OUT` under a temporary name and renamed into place, so
//! an interrupted export leaves no half-written model. The same run and options give the
//! same bytes.

pub mod ctranslate2;
mod transformers;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use wick_model::layers::SinusoidalPositions;
use wick_model::transformer::{NormPosition, TransformerConfig, Tying};

pub use self::ctranslate2::Quantization;
use self::ctranslate2::{Spec, config_json, json_string, json_string_list, python_float};
use crate::checkpoint;
use crate::run::{Run, Which};

/// The engines `wick export` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A CTranslate2 model directory.
    CTranslate2,
    /// A Hugging Face `transformers` `MarianMTModel` directory (post-norm Transformers).
    Transformers,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "ctranslate2" => Ok(ExportFormat::CTranslate2),
            "transformers" => Ok(ExportFormat::Transformers),
            other => Err(format!(
                "unknown export format `{other}` (expected ctranslate2 or transformers)"
            )),
        }
    }
}

/// What to export, and where.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub run_dir: PathBuf,
    pub checkpoint: Which,
    pub format: ExportFormat,
    /// `None`: the weights as trained (float32).
    pub quantization: Option<Quantization>,
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
}

/// What `export` wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub output: PathBuf,
    pub checkpoint: PathBuf,
    /// `(file name, bytes)` of every file written.
    pub files: Vec<(String, u64)>,
}

/// Writes the export directory of `req`.
pub fn export(req: &ExportRequest) -> Result<ExportSummary> {
    let run = Run::open(&req.run_dir)?;
    let checkpoint = run.checkpoint_path(&req.checkpoint);
    if !checkpoint.is_file() {
        bail!(
            "{}: no such checkpoint (has the run saved one yet? `checkpoints/index.json` lists the run's checkpoints)",
            checkpoint.display()
        )
    }
    if req.output.exists() && !req.force {
        bail!(
            "{} already exists (choose another directory, or pass --force to replace it)",
            req.output.display()
        )
    }
    let files = match req.format {
        ExportFormat::CTranslate2 => ctranslate2_files(&run, &checkpoint, req)?,
        ExportFormat::Transformers => {
            if req.quantization.is_some() {
                bail!(
                    "--quantization is for --format ctranslate2; transformers models are exported in float32 (quantize them in transformers)"
                )
            }
            transformers_files(&run, &checkpoint)?
        }
    };
    write_dir_atomic(&req.output, &files, req.force)?;
    Ok(ExportSummary {
        output: req.output.clone(),
        checkpoint,
        files: files
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect(),
    })
}

/// The run's Transformer config, or why `engine` cannot run this model.
fn transformer_config(run: &Run, engine: &str) -> Result<TransformerConfig> {
    let arch = run.config.model.arch();
    if arch != "transformer" {
        bail!(
            "{}: arch = \"{arch}\" cannot be exported to {engine}, which has Transformer encoder-decoders only (RNN and convolutional seq2seq models are served by wick itself: `wick translate`, or the Rust `Translator`)",
            run.dir.join("config.toml").display()
        )
    }
    let table = toml::Value::Table(run.config.model.keys().clone());
    table
        .try_into()
        .with_context(|| format!("{}: [model]", run.dir.join("config.toml").display()))
}

/// Every file of a CTranslate2 directory, `(name, bytes)`.
fn ctranslate2_files(
    run: &Run,
    checkpoint: &Path,
    req: &ExportRequest,
) -> Result<Vec<(String, Vec<u8>)>> {
    let cfg = transformer_config(run, "CTranslate2")?;
    let mut weights = Weights::load(checkpoint)?;
    let spec = transformer_spec(&cfg, &mut weights)?;
    weights.check_all_used()?;
    let model_bin = spec.serialize("TransformerSpec", 7, req.quantization)?;

    let config = config_json(&[
        ("add_source_bos", "false".into()),
        // wick's encoder reads the source tokens followed by `</s>`.
        ("add_source_eos", "true".into()),
        ("bos_token", json_string("<s>")),
        ("decoder_start_token", json_string("<s>")),
        ("eos_token", json_string("</s>")),
        ("layer_norm_epsilon", python_float(cfg.layer_norm_eps)),
        ("multi_query_attention", "false".into()),
        ("unk_token", json_string("<unk>")),
    ]);

    let src_vocab = run.tokenizers.src.vocabulary()?;
    let tgt_vocab = run.tokenizers.tgt.vocabulary()?;
    let mut files = Vec::new();
    if src_vocab == tgt_vocab {
        files.push((
            "shared_vocabulary.json".into(),
            json_string_list(&src_vocab).into_bytes(),
        ));
    } else {
        files.push((
            "source_vocabulary.json".into(),
            json_string_list(&src_vocab).into_bytes(),
        ));
        files.push((
            "target_vocabulary.json".into(),
            json_string_list(&tgt_vocab).into_bytes(),
        ));
    }
    files.push(("model.bin".into(), model_bin));
    files.push(("config.json".into(), config.into_bytes()));
    let tokenizer_files = if run.tokenizers.joint {
        vec!["tokenizer.json"]
    } else {
        vec!["tokenizer.src.json", "tokenizer.tgt.json"]
    };
    for name in &tokenizer_files {
        let path = run.dir.join(name);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        files.push((name.to_string(), bytes));
    }
    let readme = ctranslate2_readme(run, &cfg, checkpoint, req, &tokenizer_files);
    files.push(("README.md".into(), readme.into_bytes()));
    Ok(files)
}

/// Every file of a transformers `MarianMTModel` directory, `(name, bytes)`.
fn transformers_files(run: &Run, checkpoint: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let cfg = transformer_config(run, "transformers")?;
    let mut weights = Weights::load(checkpoint)?;
    let model = transformers::marian(run, &cfg, &mut weights)?;
    weights.check_all_used()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let safetensors = safetensors::serialize(
        model.tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
    )
    .context("cannot serialise model.safetensors")?;
    let (tokenizer_config, special_tokens) = transformers::tokenizer_configs(cfg.max_positions);
    let mut files = vec![
        ("config.json".to_string(), model.config.into_bytes()),
        (
            "generation_config.json".to_string(),
            model.generation_config.into_bytes(),
        ),
        ("model.safetensors".to_string(), safetensors),
    ];
    let sides: &[(&str, &str)] = if run.tokenizers.joint {
        &[("tokenizer.json", "")]
    } else {
        &[
            ("tokenizer.src.json", ""),
            ("tokenizer.tgt.json", "target_tokenizer/"),
        ]
    };
    for (file, dir) in sides {
        let path = run.dir.join(file);
        let json =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        files.push((
            format!("{dir}tokenizer.json"),
            transformers::tokenizer_with_eos(&json)?,
        ));
        files.push((
            format!("{dir}tokenizer_config.json"),
            tokenizer_config.clone().into_bytes(),
        ));
        files.push((
            format!("{dir}special_tokens_map.json"),
            special_tokens.clone().into_bytes(),
        ));
    }
    let readme = transformers_readme(run, &cfg, checkpoint);
    files.push(("README.md".into(), readme.into_bytes()));
    Ok(files)
}

/// The README of a transformers export.
fn transformers_readme(run: &Run, cfg: &TransformerConfig, checkpoint: &Path) -> String {
    let decode = &run.config.decode;
    let checkpoint_name = checkpoint
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let target = if run.tokenizers.joint {
        "tgt_tok = tokenizer"
    } else {
        "tgt_tok = AutoTokenizer.from_pretrained(\"./target_tokenizer\")  # separate target vocabulary"
    };
    format!(
        "# A wick Transformer for Hugging Face transformers

Exported by `wick export --format transformers` from the run `{run}` (checkpoint
`{checkpoint_name}`): a `MarianMTModel` ({enc}+{dec} layers, d_model {d}, {h} heads, d_ff
{ff}, positions up to {maxpos}), float32. Its logits equal wick's (up to float rounding): the
weights are wick's, with the residual width's coordinates reordered to Marian's sinusoid
layout (sines first, then cosines) and the fused Q/K/V projections split.

The tokenizer appends `</s>` to the source, as wick's encoder reads it; generation starts
from `<s>` (`decoder_start_token_id` 1).

```python
# pip install transformers torch
from transformers import AutoTokenizer, MarianMTModel

tokenizer = AutoTokenizer.from_pretrained(\".\")
{target}
model = MarianMTModel.from_pretrained(\".\").eval()
batch = tokenizer([\"Hello!\"], return_tensors=\"pt\", padding=True)
out = model.generate(**batch, num_beams={beam}, max_new_tokens={max_new})
print(tgt_tok.batch_decode(out, skip_special_tokens=True))
```

Beam search in transformers ranks hypotheses by log-probability / |Y|^α (`length_penalty`),
wick by log-probability / ((5 + |Y|) / 6)^α; greedy search (`num_beams=1`) is the same.
",
        run = run.dir.display(),
        enc = cfg.encoder_layers,
        dec = cfg.decoder_layers,
        d = cfg.d_model,
        h = cfg.n_heads,
        ff = cfg.d_ff,
        maxpos = cfg.max_positions,
        beam = decode.beam,
        max_new = cfg.max_positions - 1,
    )
}

/// The checkpoint's tensors, each taken once.
struct Weights {
    tensors: std::collections::HashMap<String, Tensor>,
    path: PathBuf,
}

impl Weights {
    fn load(path: &Path) -> Result<Self> {
        let (tensors, _) = checkpoint::load(path, &Device::Cpu)?;
        Ok(Self {
            tensors,
            path: path.to_path_buf(),
        })
    }

    /// `(shape, values)` of `name`, which must have `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no tensor {name} (the checkpoint does not fit the run's config)",
                self.path.display()
            )
        })?;
        if t.dims() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, the run's config needs {shape:?}",
                self.path.display(),
                t.dims()
            )
        }
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }

    fn check_all_used(&self) -> Result<()> {
        if let Some(name) = self.tensors.keys().min() {
            bail!(
                "{}: tensor {name} has no place in a Transformer of the run's config",
                self.path.display()
            )
        }
        Ok(())
    }
}

/// The `TransformerSpec` variables of a wick Transformer.
fn transformer_spec(cfg: &TransformerConfig, w: &mut Weights) -> Result<Spec> {
    let d = cfg.d_model;
    let mut spec = Spec::default();
    let linear = |spec: &mut Spec,
                  w: &mut Weights,
                  from: &str,
                  to: &str,
                  d_out: usize,
                  d_in: usize|
     -> Result<()> {
        spec.tensor(
            format!("{to}/weight"),
            &[d_out, d_in],
            w.take(&format!("{from}.weight"), &[d_out, d_in])?,
            true,
        )?;
        spec.tensor(
            format!("{to}/bias"),
            &[d_out],
            w.take(&format!("{from}.bias"), &[d_out])?,
            false,
        )
    };
    let norm = |spec: &mut Spec, w: &mut Weights, from: &str, to: &str| -> Result<()> {
        spec.tensor(
            format!("{to}/gamma"),
            &[d],
            w.take(&format!("{from}.weight"), &[d])?,
            false,
        )?;
        spec.tensor(
            format!("{to}/beta"),
            &[d],
            w.take(&format!("{from}.bias"), &[d])?,
            false,
        )
    };

    // Embeddings and the output projection: tied ones are equal variables, which the
    // serialiser stores once (as CTranslate2's converters do for tied models).
    let (src_name, tgt_name) = match cfg.tie_embeddings {
        Tying::All => ("embed.weight", "embed.weight"),
        Tying::Decoder | Tying::None => ("src_embed.weight", "tgt_embed.weight"),
    };
    let src_rows = w
        .tensors
        .get(src_name)
        .map(|t| t.dims().first().copied().unwrap_or(0))
        .unwrap_or(0);
    let tgt_rows = w
        .tensors
        .get(tgt_name)
        .map(|t| t.dims().first().copied().unwrap_or(0))
        .unwrap_or(0);
    let src_embed = w.take(src_name, &[src_rows, d])?;
    let tgt_embed = if tgt_name == src_name {
        src_embed.clone()
    } else {
        w.take(tgt_name, &[tgt_rows, d])?
    };
    let output = match cfg.tie_embeddings {
        Tying::None => w.take("output_proj.weight", &[tgt_rows, d])?,
        Tying::All | Tying::Decoder => tgt_embed.clone(),
    };
    spec.tensor(
        "encoder/embeddings_0/weight",
        &[src_rows, d],
        src_embed,
        true,
    )?;
    spec.tensor("decoder/embeddings/weight", &[tgt_rows, d], tgt_embed, true)?;
    spec.tensor("decoder/projection/weight", &[tgt_rows, d], output, true)?;

    // wick's own table (sin and cos interleaved), not CTranslate2's default layout.
    let table = SinusoidalPositions::new(cfg.max_positions, d, &Device::Cpu)?
        .get(0, cfg.max_positions)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for side in ["encoder", "decoder"] {
        spec.tensor(
            format!("{side}/position_encodings/encodings"),
            &[cfg.max_positions, d],
            table.clone(),
            false,
        )?;
    }

    let heads = i16::try_from(cfg.n_heads)?;
    let pre_norm = i8::from(cfg.norm == NormPosition::Pre);
    for side in ["encoder", "decoder"] {
        spec.int8(format!("{side}/activation"), 0)?; // ReLU
        spec.int16(format!("{side}/num_heads"), heads)?;
        spec.int8(format!("{side}/pre_norm"), pre_norm)?;
        spec.int8(format!("{side}/scale_embeddings"), 1)?; // × √d_model, as wick
    }
    spec.int8("encoder/embeddings_merge", 0)?;
    spec.int8("encoder/multi_query_attention", 0)?;
    for flag in [
        "alibi",
        "alibi_use_positive_positions",
        "scale_alibi",
        "start_from_zero_embedding",
    ] {
        spec.int8(format!("decoder/{flag}"), 0)?;
    }
    spec.int16("decoder/alignment_heads", 1)?;
    spec.int16("decoder/alignment_layer", -1)?;

    // The blocks both stacks have: self-attention (fused Q/K/V as `linear_0`) and the
    // feed-forward network, each with its norm.
    let self_attention = |spec: &mut Spec, w: &mut Weights, from: &str, to: &str| {
        linear(
            spec,
            w,
            &format!("{from}.self_attn.qkv_proj"),
            &format!("{to}/self_attention/linear_0"),
            3 * d,
            d,
        )?;
        linear(
            spec,
            w,
            &format!("{from}.self_attn.out_proj"),
            &format!("{to}/self_attention/linear_1"),
            d,
            d,
        )?;
        norm(
            spec,
            w,
            &format!("{from}.self_attn_norm"),
            &format!("{to}/self_attention/layer_norm"),
        )
    };
    let ffn = |spec: &mut Spec, w: &mut Weights, from: &str, to: &str| {
        linear(
            spec,
            w,
            &format!("{from}.ffn.fc1"),
            &format!("{to}/ffn/linear_0"),
            cfg.d_ff,
            d,
        )?;
        linear(
            spec,
            w,
            &format!("{from}.ffn.fc2"),
            &format!("{to}/ffn/linear_1"),
            d,
            cfg.d_ff,
        )?;
        norm(
            spec,
            w,
            &format!("{from}.ffn_norm"),
            &format!("{to}/ffn/layer_norm"),
        )
    };
    for i in 0..cfg.encoder_layers {
        let (from, to) = (format!("encoder.layers.{i}"), format!("encoder/layer_{i}"));
        self_attention(&mut spec, w, &from, &to)?;
        ffn(&mut spec, w, &from, &to)?;
    }
    for i in 0..cfg.decoder_layers {
        let (from, to) = (format!("decoder.layers.{i}"), format!("decoder/layer_{i}"));
        self_attention(&mut spec, w, &from, &to)?;
        linear(
            &mut spec,
            w,
            &format!("{from}.cross_attn.q_proj"),
            &format!("{to}/attention/linear_0"),
            d,
            d,
        )?;
        linear(
            &mut spec,
            w,
            &format!("{from}.cross_attn.kv_proj"),
            &format!("{to}/attention/linear_1"),
            2 * d,
            d,
        )?;
        linear(
            &mut spec,
            w,
            &format!("{from}.cross_attn.out_proj"),
            &format!("{to}/attention/linear_2"),
            d,
            d,
        )?;
        norm(
            &mut spec,
            w,
            &format!("{from}.cross_attn_norm"),
            &format!("{to}/attention/layer_norm"),
        )?;
        ffn(&mut spec, w, &from, &to)?;
    }
    if cfg.norm == NormPosition::Pre {
        norm(&mut spec, w, "encoder.final_norm", "encoder/layer_norm")?;
        norm(&mut spec, w, "decoder.final_norm", "decoder/layer_norm")?;
    }
    Ok(spec)
}

/// The README of a CTranslate2 export: what it is and how to serve it.
fn ctranslate2_readme(
    run: &Run,
    cfg: &TransformerConfig,
    checkpoint: &Path,
    req: &ExportRequest,
    tokenizer_files: &[&str],
) -> String {
    let decode = &run.config.decode;
    let (src_tok, tgt_tok) = match tokenizer_files {
        [joint] => (*joint, *joint),
        [src, tgt, ..] => (*src, *tgt),
        [] => ("tokenizer.json", "tokenizer.json"),
    };
    let quantization = req
        .quantization
        .map_or("none (float32 as trained)".to_string(), |q| q.to_string());
    // CTranslate2 computes in the type the weights were saved in unless told otherwise.
    let compute = req.quantization.map_or("default", |q| q.name());
    let checkpoint_name = checkpoint
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tokenizers_line = if src_tok == tgt_tok {
        format!("tokenizer = Tokenizer.from_file(\"{src_tok}\")\nsrc_tok = tgt_tok = tokenizer")
    } else {
        format!(
            "src_tok = Tokenizer.from_file(\"{src_tok}\")\ntgt_tok = Tokenizer.from_file(\"{tgt_tok}\")"
        )
    };
    let norm = match cfg.norm {
        NormPosition::Pre => "pre-norm",
        NormPosition::Post => "post-norm",
    };
    format!(
        "# A wick Transformer for CTranslate2

Exported by `wick export --format ctranslate2` from the run `{run}` (checkpoint
`{checkpoint_name}`), quantization: {quantization}.

- {norm} Transformer, {enc}+{dec} layers, d_model {d}, {h} heads, d_ff {ff}, positions up to {maxpos}
  (wick's sinusoid table is stored in `model.bin`).
- The encoder reads the source tokens followed by `</s>` (`add_source_eos` in `config.json`);
  the decoder starts from `<s>`.
- Tokens come from wick's tokenizer, `{src_tok}` here: feed CTranslate2 the tokens of
  `encode(text, add_special_tokens=False)` and turn the output tokens back into text with
  the target tokenizer's `decode`.

## Serve it with CTranslate2 (Python)

```python
# pip install ctranslate2 tokenizers
import ctranslate2
from tokenizers import Tokenizer

{tokenizers_line}
# Run from this directory (or give its path).
translator = ctranslate2.Translator(\".\", device=\"cpu\", compute_type=\"{compute}\",
                                    inter_threads=2, intra_threads=1)

def translate(sentences):
    tokens = [src_tok.encode(s, add_special_tokens=False).tokens for s in sentences]
    results = translator.translate_batch(
        tokens,
        beam_size={beam},
        length_penalty={alpha},
        max_input_length={max_input},
        max_decoding_length={max_out},
        max_batch_size=64,
    )
    return [
        tgt_tok.decode([tgt_tok.token_to_id(t) for t in r.hypotheses[0]])
        for r in results
    ]

print(translate([\"Hello!\"]))
```

The values are the run's `[decode]` settings: beam {beam}, α {alpha}. Two differences from
`wick translate`:

- Length penalty: wick ranks finished beam hypotheses by log-probability / ((5 + |Y|) / 6)^α
  (GNMT); CTranslate2 divides by |Y|^α. Greedy search (`beam_size=1`) is the same in both,
  and beam outputs agree where the penalty does not change the ranking (always at α = 0).
- Output length: wick stops each sentence after ⌊{a} · source tokens⌋ + {b} tokens; CTranslate2
  takes one `max_decoding_length` per call. The value above is the model's own limit
  ({maxpos} positions, `<s>` included).

## Serve it with wick (Rust)

```rust
use wick_train::{{Translator, Which}};

let translator = Translator::from_run(\"{run}\".as_ref(), Which::Best, &candle_core::Device::Cpu)?;
println!(\"{{}}\", translator.translate(&[\"Hello!\"])?[0]);
```
",
        run = run.dir.display(),
        enc = cfg.encoder_layers,
        dec = cfg.decoder_layers,
        d = cfg.d_model,
        h = cfg.n_heads,
        ff = cfg.d_ff,
        maxpos = cfg.max_positions,
        beam = decode.beam,
        alpha = decode.length_penalty,
        a = decode.max_len_a,
        b = decode.max_len_b,
        max_input = cfg.max_positions - 1,
        max_out = cfg.max_positions - 1,
    )
}

/// Writes `files` (paths relative to `out`) into a new directory `out` (replacing it when
/// `force`), through a temporary sibling directory renamed into place.
pub(crate) fn write_dir_atomic(out: &Path, files: &[(String, Vec<u8>)], force: bool) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: not a directory name", out.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        for (file, bytes) in files {
            let path = tmp.join(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            checkpoint::write_atomic(&path, bytes)?;
        }
        if out.exists() {
            if !force {
                bail!("{} already exists", out.display())
            }
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(out, &old)?;
            std::fs::rename(&tmp, out)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&tmp, out)?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        e.context(format!("cannot write {}", out.display()))
    })
}
