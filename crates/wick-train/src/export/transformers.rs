//! A Hugging Face `MarianMTModel` directory: `config.json`, `model.safetensors`,
//! `generation_config.json` and the files `PreTrainedTokenizerFast` loads.
//!
//! Marian in `transformers` is the post-norm Transformer wick trains, with two differences
//! this module removes exactly:
//! - its sinusoids put every sine in the first half of the width and every cosine in the
//!   second (`[sin(p·ω₀) … sin(p·ω_{d/2−1}), cos(p·ω₀) …]`), wick interleaves them (`sin, cos,
//!   sin, cos, …`) with the same frequencies. The residual width is only a basis: permuting
//!   its coordinates in every weight that reads or writes it (embeddings, the Q/K/V and FFN
//!   inputs, the attention and FFN outputs, the layer norms, the output projection) gives
//!   the same function, so wick's coordinate `2j` becomes Marian's `j` and `2j + 1` becomes
//!   `d/2 + j`;
//! - it projects Q, K and V with three matrices; wick's fused rows are split.
//!
//! Pre-norm models have no faithful target there: the pre-norm encoder-decoders of
//! `transformers` (M2M100, NLLB) compute their sinusoids at run time with other frequencies,
//! and mBART normalises its embeddings. They are refused; CTranslate2 serves them.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use wick_model::transformer::{NormPosition, TransformerConfig, Tying};

use super::Weights;
use super::ctranslate2::json_string;
use crate::run::Run;

/// Marian's coordinate `j` reads wick's coordinate `perm[j]`.
fn permutation(d: usize) -> Vec<usize> {
    (0..d)
        .map(|j| {
            if j < d / 2 {
                2 * j
            } else {
                2 * (j - d / 2) + 1
            }
        })
        .collect()
}

/// A matrix of `cols` columns in row-major order.
struct Matrix {
    cols: usize,
    values: Vec<f32>,
}

impl Matrix {
    fn permute_cols(mut self, perm: &[usize]) -> Self {
        let mut out = Vec::with_capacity(self.values.len());
        for row in self.values.chunks(self.cols) {
            out.extend(perm.iter().map(|&c| row[c]));
        }
        self.values = out;
        self
    }

    fn permute_rows(mut self, perm: &[usize]) -> Self {
        let mut out = Vec::with_capacity(self.values.len());
        for &r in perm {
            out.extend_from_slice(&self.values[r * self.cols..(r + 1) * self.cols]);
        }
        self.values = out;
        self
    }

    /// Rows `start .. start + len`.
    fn rows(&self, start: usize, len: usize) -> Matrix {
        Matrix {
            cols: self.cols,
            values: self.values[start * self.cols..(start + len) * self.cols].to_vec(),
        }
    }
}

fn permute(v: &[f32], perm: &[usize]) -> Vec<f32> {
    perm.iter().map(|&i| v[i]).collect()
}

fn take(w: &mut Weights, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    Ok(Matrix {
        cols,
        values: w.take(name, &[rows, cols])?,
    })
}

/// How a linear layer meets the residual stream, whose coordinates are permuted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Io {
    /// Its input is the residual stream: columns permuted.
    Reads,
    /// Its output is added to the residual stream: rows and bias permuted.
    Writes,
}

/// The tensors of `model.safetensors`, by name.
#[derive(Default)]
struct Tensors(BTreeMap<String, Tensor>);

impl Tensors {
    fn put(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> Result<()> {
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        if self.0.insert(name.to_string(), t).is_some() {
            bail!("transformers tensor {name} written twice")
        }
        Ok(())
    }

    /// wick's linear layer `from` as Marian's `to` layers, each `(name, rows)` taking the
    /// next rows of the weight (fused Q/K/V and K/V are split).
    fn linear(
        &mut self,
        w: &mut Weights,
        perm: &[usize],
        from: &str,
        to: &[(String, usize)],
        d_in: usize,
        io: Io,
    ) -> Result<()> {
        let d_out: usize = to.iter().map(|t| t.1).sum();
        let mut weight = take(w, &format!("{from}.weight"), d_out, d_in)?;
        let mut bias = w.take(&format!("{from}.bias"), &[d_out])?;
        match io {
            Io::Reads => weight = weight.permute_cols(perm),
            Io::Writes => {
                weight = weight.permute_rows(perm);
                bias = permute(&bias, perm);
            }
        }
        let mut start = 0;
        for (name, len) in to {
            self.put(
                &format!("{name}.weight"),
                &[*len, d_in],
                weight.rows(start, *len).values,
            )?;
            self.put(
                &format!("{name}.bias"),
                &[*len],
                bias[start..start + len].to_vec(),
            )?;
            start += len;
        }
        Ok(())
    }

    fn norm(&mut self, w: &mut Weights, perm: &[usize], from: &str, to: &str) -> Result<()> {
        let d = perm.len();
        let gamma = w.take(&format!("{from}.weight"), &[d])?;
        let beta = w.take(&format!("{from}.bias"), &[d])?;
        self.put(&format!("{to}.weight"), &[d], permute(&gamma, perm))?;
        self.put(&format!("{to}.bias"), &[d], permute(&beta, perm))
    }
}

/// The tensors of `model.safetensors` and the `config.json` of a `MarianMTModel`.
pub(super) struct MarianModel {
    pub tensors: BTreeMap<String, Tensor>,
    pub config: String,
    pub generation_config: String,
}

pub(super) fn marian(run: &Run, cfg: &TransformerConfig, w: &mut Weights) -> Result<MarianModel> {
    let config_path = run.dir.join("config.toml");
    if cfg.norm != NormPosition::Post {
        bail!(
            "{}: model.norm = \"pre\" cannot be exported to transformers: its post-norm MarianMTModel is the faithful target for wick's Transformers, and its pre-norm encoder-decoders (M2M100, NLLB) compute sinusoids with other frequencies at run time (mBART also normalises its embeddings), so no exact copy exists. Export pre-norm models with --format ctranslate2.",
            config_path.display()
        )
    }
    if cfg.layer_norm_eps != 1e-5 {
        bail!(
            "{}: model.layer_norm_eps = {} cannot be exported to transformers, whose Marian layer norms use 1e-5",
            config_path.display(),
            cfg.layer_norm_eps
        )
    }
    let d = cfg.d_model;
    let perm = permutation(d);
    let mut out = Tensors::default();

    // Embeddings and the output layer (their columns are the residual width).
    let rows_of = |w: &Weights, name: &str| {
        w.tensors
            .get(name)
            .and_then(|t| t.dims().first().copied())
            .unwrap_or(0)
    };
    let (src_name, tgt_name) = match cfg.tie_embeddings {
        Tying::All => ("embed.weight", "embed.weight"),
        Tying::Decoder | Tying::None => ("src_embed.weight", "tgt_embed.weight"),
    };
    let (v_src, v_tgt) = (rows_of(w, src_name), rows_of(w, tgt_name));
    let src = take(w, src_name, v_src, d)?.permute_cols(&perm).values;
    let tgt = if tgt_name == src_name {
        src.clone()
    } else {
        take(w, tgt_name, v_tgt, d)?.permute_cols(&perm).values
    };
    let lm_head = match cfg.tie_embeddings {
        Tying::None => {
            take(w, "output_proj.weight", v_tgt, d)?
                .permute_cols(&perm)
                .values
        }
        Tying::All | Tying::Decoder => tgt.clone(),
    };
    let shared = cfg.tie_embeddings == Tying::All;
    if shared {
        out.put("model.shared.weight", &[v_src, d], src.clone())?;
    }
    out.put("model.encoder.embed_tokens.weight", &[v_src, d], src)?;
    out.put("model.decoder.embed_tokens.weight", &[v_tgt, d], tgt)?;
    out.put("lm_head.weight", &[v_tgt, d], lm_head)?;
    out.put("final_logits_bias", &[1, v_tgt], vec![0.0; v_tgt])?;
    let table = marian_positions(cfg.max_positions, d);
    for side in ["encoder", "decoder"] {
        out.put(
            &format!("model.{side}.embed_positions.weight"),
            &[cfg.max_positions, d],
            table.clone(),
        )?;
    }

    for (side, layers) in [
        ("encoder", cfg.encoder_layers),
        ("decoder", cfg.decoder_layers),
    ] {
        for i in 0..layers {
            let (from, to) = (
                format!("{side}.layers.{i}"),
                format!("model.{side}.layers.{i}"),
            );
            let mut linear = |from_name: &str, parts: &[(&str, usize)], d_in: usize, io: Io| {
                let to: Vec<(String, usize)> = parts
                    .iter()
                    .map(|&(n, len)| (format!("{to}.{n}"), len))
                    .collect();
                out.linear(w, &perm, &format!("{from}.{from_name}"), &to, d_in, io)
            };
            linear(
                "self_attn.qkv_proj",
                &[
                    ("self_attn.q_proj", d),
                    ("self_attn.k_proj", d),
                    ("self_attn.v_proj", d),
                ],
                d,
                Io::Reads,
            )?;
            linear(
                "self_attn.out_proj",
                &[("self_attn.out_proj", d)],
                d,
                Io::Writes,
            )?;
            if side == "decoder" {
                linear(
                    "cross_attn.q_proj",
                    &[("encoder_attn.q_proj", d)],
                    d,
                    Io::Reads,
                )?;
                linear(
                    "cross_attn.kv_proj",
                    &[("encoder_attn.k_proj", d), ("encoder_attn.v_proj", d)],
                    d,
                    Io::Reads,
                )?;
                linear(
                    "cross_attn.out_proj",
                    &[("encoder_attn.out_proj", d)],
                    d,
                    Io::Writes,
                )?;
            }
            linear("ffn.fc1", &[("fc1", cfg.d_ff)], d, Io::Reads)?;
            linear("ffn.fc2", &[("fc2", d)], cfg.d_ff, Io::Writes)?;
            let mut norm = |from_name: &str, to_name: &str| {
                out.norm(
                    w,
                    &perm,
                    &format!("{from}.{from_name}"),
                    &format!("{to}.{to_name}"),
                )
            };
            norm("self_attn_norm", "self_attn_layer_norm")?;
            if side == "decoder" {
                norm("cross_attn_norm", "encoder_attn_layer_norm")?;
            }
            norm("ffn_norm", "final_layer_norm")?;
        }
    }

    let decode = &run.config.decode;
    let config = marian_config(
        cfg,
        v_src,
        v_tgt,
        shared,
        cfg.tie_embeddings != Tying::None,
        decode.beam,
    );
    let generation_config = format!(
        "{{\n  \"bos_token_id\": 1,\n  \"decoder_start_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"forced_eos_token_id\": 2,\n  \"length_penalty\": {alpha},\n  \"max_length\": {max_len},\n  \"num_beams\": {beam},\n  \"pad_token_id\": 0\n}}\n",
        alpha = super::ctranslate2::python_float(decode.length_penalty),
        max_len = cfg.max_positions,
        beam = decode.beam,
    );
    Ok(MarianModel {
        tensors: out.0,
        config,
        generation_config,
    })
}

/// `transformers`' Marian table: `[sin(p·ω_j) for j < d/2, cos(p·ω_j) for j < d/2]` with
/// `ω_j = 10000^(−2j/d)`, computed in double precision like its numpy code.
fn marian_positions(max_positions: usize, d: usize) -> Vec<f32> {
    let mut table = vec![0f32; max_positions * d];
    for p in 0..max_positions {
        for j in 0..d / 2 {
            let angle = p as f64 / 10000f64.powf(2.0 * j as f64 / d as f64);
            table[p * d + j] = angle.sin() as f32;
            table[p * d + d / 2 + j] = angle.cos() as f32;
        }
    }
    table
}

fn marian_config(
    cfg: &TransformerConfig,
    v_src: usize,
    v_tgt: usize,
    shared: bool,
    tie_output: bool,
    beam: usize,
) -> String {
    let fields: Vec<(&str, String)> = vec![
        ("activation_dropout", "0.0".into()),
        ("activation_function", json_string("relu")),
        ("architectures", "[\n    \"MarianMTModel\"\n  ]".into()),
        ("attention_dropout", "0.0".into()),
        ("bos_token_id", "1".into()),
        ("d_model", cfg.d_model.to_string()),
        ("decoder_attention_heads", cfg.n_heads.to_string()),
        ("decoder_ffn_dim", cfg.d_ff.to_string()),
        ("decoder_layerdrop", "0.0".into()),
        ("decoder_layers", cfg.decoder_layers.to_string()),
        ("decoder_start_token_id", "1".into()),
        ("decoder_vocab_size", v_tgt.to_string()),
        ("dropout", "0.0".into()),
        ("encoder_attention_heads", cfg.n_heads.to_string()),
        ("encoder_ffn_dim", cfg.d_ff.to_string()),
        ("encoder_layerdrop", "0.0".into()),
        ("encoder_layers", cfg.encoder_layers.to_string()),
        ("eos_token_id", "2".into()),
        ("forced_eos_token_id", "2".into()),
        ("init_std", "0.02".into()),
        ("is_encoder_decoder", "true".into()),
        ("max_position_embeddings", cfg.max_positions.to_string()),
        ("model_type", json_string("marian")),
        ("num_beams", beam.to_string()),
        ("num_hidden_layers", cfg.encoder_layers.to_string()),
        ("pad_token_id", "0".into()),
        ("scale_embedding", "true".into()),
        ("share_encoder_decoder_embeddings", shared.to_string()),
        ("tie_word_embeddings", tie_output.to_string()),
        ("torch_dtype", json_string("float32")),
        ("use_cache", "true".into()),
        ("vocab_size", v_src.to_string()),
    ];
    super::ctranslate2::config_json(&fields)
}

/// `tokenizer_config.json` and `special_tokens_map.json` for `PreTrainedTokenizerFast`.
pub(super) fn tokenizer_configs(max_positions: usize) -> (String, String) {
    let specials = "  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"pad_token\": \"<pad>\",\n  \"unk_token\": \"<unk>\"";
    let config = format!(
        "{{\n{specials},\n  \"clean_up_tokenization_spaces\": false,\n  \"model_max_length\": {},\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}}\n",
        max_positions
    );
    let map = format!("{{\n{specials}\n}}\n");
    (config, map)
}

/// wick's tokenizer with a post-processor that appends `</s>` (what the encoder reads
/// after the tokens) when `add_special_tokens` is on, transformers' default.
pub(super) fn tokenizer_with_eos(json: &[u8]) -> Result<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(json)?;
    value["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "</s>", "type_id": 0}}
        ],
        "pair": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 0}},
            {"SpecialToken": {"id": "</s>", "type_id": 0}}
        ],
        "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}
    });
    Ok(serde_json::to_vec_pretty(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_maps_wick_sinusoids_onto_marians() {
        let (n, d) = (50, 16);
        let wick = wick_model::layers::SinusoidalPositions::new(n, d, &Device::Cpu)
            .and_then(|p| p.get(0, n))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_default();
        let marian = marian_positions(n, d);
        let perm = permutation(d);
        for p in 0..n {
            let permuted = permute(&wick[p * d..(p + 1) * d], &perm);
            assert_eq!(
                permuted,
                marian[p * d..(p + 1) * d].to_vec(),
                "position {p}"
            );
        }
    }

    #[test]
    fn matrices_permute_rows_and_columns() {
        let m = Matrix {
            cols: 4,
            values: (0..8).map(|x| x as f32).collect(),
        };
        let perm = permutation(4); // [0, 2, 1, 3]
        assert_eq!(
            m.permute_cols(&perm).values,
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        let m = Matrix {
            cols: 1,
            values: vec![10., 11., 12., 13.],
        };
        assert_eq!(m.permute_rows(&perm).values, vec![10., 12., 11., 13.]);
    }
}
