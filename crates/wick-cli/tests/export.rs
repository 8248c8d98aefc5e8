//! `wick export` as a user runs it: the CTranslate2 directory (its `model.bin` read back
//! variable by variable and held to the checkpoint, tied weights stored once, int8 rows
//! within half a step of the weights, the same bytes on every export), the transformers
//! directory (wick's coordinates reordered to Marian's sinusoid layout), and the refusals:
//! an RNN run, a pre-norm run for transformers, an existing directory.
//!
//! That CTranslate2 and transformers load these directories and translate as wick does is
//! `scripts/check_export.sh` (it needs them from PyPI).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{err, ok, walk, wick};

/// A few updates of a sanity config, enough for a checkpoint.
fn train(config: &str, run: &Path, extra: &[&str]) {
    let run = run.to_str().unwrap();
    let mut args = vec![
        "train",
        "--config",
        config,
        "--run-dir",
        run,
        "--samples",
        "0",
        "--set",
        "train.max_steps=6",
        "--set",
        "train.validate_every=6",
        "--set",
        "data.synthetic.n_train=300",
        "--set",
        "data.synthetic.n_test=10",
        "--set",
        "train.warmup_steps=2",
    ];
    args.extend(extra);
    ok(wick(&args));
}

fn checkpoint(run: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let tensors = candle_core::safetensors::load(
        run.join("checkpoints/best.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors
        .into_iter()
        .map(|(k, t)| {
            let shape = t.dims().to_vec();
            (
                k,
                (shape, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
            )
        })
        .collect()
}

/// A variable of a `model.bin`: shape, CTranslate2 type id, raw bytes.
#[derive(Debug, Clone, PartialEq)]
struct Var {
    shape: Vec<usize>,
    dtype: u8,
    bytes: Vec<u8>,
}

impl Var {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, 0, "not float32");
        self.bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// A `model.bin` read back.
struct ModelBin {
    spec: String,
    revision: u32,
    vars: Vec<(String, Var)>,
    /// `(alias, variable it names)`.
    aliases: Vec<(String, String)>,
}

/// Reads a `model.bin` (binary version 6): spec name, revision, variables, aliases.
fn read_model_bin(path: &Path) -> ModelBin {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0usize;
    let mut take = |n: usize| {
        let s = &bytes[at..at + n];
        at += n;
        s.to_vec()
    };
    let u32_of = |b: Vec<u8>| u32::from_le_bytes(b.try_into().unwrap());
    let string = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
        let n = u16::from_le_bytes(take(2).try_into().unwrap()) as usize;
        let s = take(n);
        assert_eq!(s[n - 1], 0, "strings end with NUL");
        String::from_utf8(s[..n - 1].to_vec()).unwrap()
    };
    assert_eq!(u32_of(take(4)), 6, "binary version");
    let name = string(&mut take);
    let revision = u32_of(take(4));
    let n = u32_of(take(4));
    let mut vars = Vec::new();
    for _ in 0..n {
        let var_name = string(&mut take);
        let ndim = take(1)[0] as usize;
        let shape: Vec<usize> = (0..ndim).map(|_| u32_of(take(4)) as usize).collect();
        let dtype = take(1)[0];
        let nbytes = u32_of(take(4)) as usize;
        vars.push((
            var_name,
            Var {
                shape,
                dtype,
                bytes: take(nbytes),
            },
        ));
    }
    let n_alias = u32_of(take(4));
    let aliases = (0..n_alias)
        .map(|_| (string(&mut take), string(&mut take)))
        .collect();
    assert_eq!(at, bytes.len(), "trailing bytes in model.bin");
    ModelBin {
        spec: name,
        revision,
        vars,
        aliases,
    }
}

fn export(run: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["export", "--run", run.to_str().unwrap(), "--format"];
    args.extend(extra);
    args.push(out.to_str().unwrap());
    wick(&args)
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ctranslate2_export_holds_the_checkpoint_and_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Post-norm, separate source and target embeddings and output layer: every mapping.
    train(
        "configs/reverse.toml",
        &run,
        &[
            "--set",
            "model.norm=post",
            "--set",
            "model.tie_embeddings=decoder",
        ],
    );
    let out = tmp.path().join("ct2");
    let printed = ok(export(&run, &out, &["ctranslate2"]));
    assert!(printed.contains("README.md"), "{printed}");
    let names: Vec<String> = files(&out)
        .into_iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "README.md",
            "config.json",
            "model.bin",
            "shared_vocabulary.json",
            "tokenizer.json"
        ]
    );
    let ModelBin {
        spec,
        revision,
        vars,
        aliases,
    } = read_model_bin(&out.join("model.bin"));
    assert_eq!((spec.as_str(), revision), ("TransformerSpec", 7));
    let vars: HashMap<String, Var> = vars.into_iter().collect();
    let ckpt = checkpoint(&run);
    let (d, v) = (64, ckpt["src_embed.weight"].0[0]);

    // Weights arrive untouched, under CTranslate2's names.
    for (wick_name, ct2_name) in [
        (
            "encoder.layers.1.self_attn.qkv_proj.weight",
            "encoder/layer_1/self_attention/linear_0/weight",
        ),
        (
            "decoder.layers.0.cross_attn.kv_proj.bias",
            "decoder/layer_0/attention/linear_1/bias",
        ),
        (
            "decoder.layers.1.ffn.fc2.weight",
            "decoder/layer_1/ffn/linear_1/weight",
        ),
        (
            "encoder.layers.0.ffn_norm.weight",
            "encoder/layer_0/ffn/layer_norm/gamma",
        ),
        ("src_embed.weight", "encoder/embeddings_0/weight"),
        ("tgt_embed.weight", "decoder/embeddings/weight"),
    ] {
        let var = &vars[ct2_name];
        assert_eq!(var.shape, ckpt[wick_name].0, "{ct2_name}");
        assert_eq!(var.f32s(), ckpt[wick_name].1, "{ct2_name}");
    }
    // The flags a post-norm ReLU Transformer needs.
    assert_eq!(vars["encoder/pre_norm"].bytes, [0]);
    assert_eq!(vars["decoder/num_heads"].bytes, 4i16.to_le_bytes());
    assert_eq!(vars["decoder/scale_embeddings"].bytes, [1]);
    assert!(
        !vars.contains_key("encoder/layer_norm/gamma"),
        "post-norm has no final norm"
    );
    // wick's interleaved table, stored once.
    let table = vars["decoder/position_encodings/encodings"].f32s();
    assert_eq!(vars["decoder/position_encodings/encodings"].shape, [64, d]);
    assert_eq!(
        (table[d], table[d + 1]),
        (1f64.sin() as f32, 1f64.cos() as f32)
    );
    // The output layer is the target embedding: an alias, as tied weights are stored once.
    assert!(aliases.contains(&(
        "decoder/projection/weight".to_string(),
        "decoder/embeddings/weight".to_string()
    )));
    assert!(aliases.contains(&(
        "encoder/position_encodings/encodings".to_string(),
        "decoder/position_encodings/encodings".to_string()
    )));
    assert_eq!(vars["decoder/embeddings/weight"].shape, [v, d]);

    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"add_source_eos\": true"), "{config}");
    assert!(config.contains("\"layer_norm_epsilon\": 1e-05"), "{config}");
    let vocab: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("shared_vocabulary.json")).unwrap())
            .unwrap();
    assert_eq!(vocab.len(), v);
    assert_eq!(&vocab[..4], ["<pad>", "<s>", "</s>", "<unk>"]);

    // Same input, same bytes; an existing directory is kept unless --force.
    let again = tmp.path().join("ct2-again");
    ok(export(&run, &again, &["ctranslate2"]));
    assert_eq!(files(&out), files(&again));
    let refused = err(export(&run, &out, &["ctranslate2"]));
    assert!(
        refused.contains("already exists") && refused.contains("--force"),
        "{refused}"
    );
    ok(export(
        &run,
        &out,
        &["ctranslate2", "--force", "--quantization", "int8"],
    ));

    // int8: one scale per row, every weight within half a quantization step.
    let vars = read_model_bin(&out.join("model.bin")).vars;
    let vars: HashMap<String, Var> = vars.into_iter().collect();
    let name = "encoder/layer_0/ffn/linear_0/weight";
    let (q, scales) = (&vars[name], vars[&format!("{name}_scale")].f32s());
    assert_eq!(q.dtype, 1);
    let original = &ckpt["encoder.layers.0.ffn.fc1.weight"];
    assert_eq!(scales.len(), original.0[0]);
    for (row, (ints, values)) in q.bytes.chunks(d).zip(original.1.chunks(d)).enumerate() {
        for (&i, &x) in ints.iter().zip(values) {
            let back = (i as i8) as f32 / scales[row];
            assert!(
                (back - x).abs() <= 0.5 / scales[row] + 1e-7,
                "row {row}: {x} → {back}"
            );
        }
    }
    // Biases and norms stay float32 under plain int8.
    assert_eq!(vars["encoder/layer_0/ffn/linear_0/bias"].dtype, 0);
}

#[test]
fn transformers_export_reorders_coordinates_and_refuses_pre_norm() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train("configs/reverse.toml", &run, &["--set", "model.norm=post"]);
    let out = tmp.path().join("hf");
    ok(export(&run, &out, &["transformers"]));
    let tensors =
        candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let ckpt = checkpoint(&run);
    let d = 64;
    let marian = |name: &str| {
        tensors[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    // Marian's coordinate j < d/2 is wick's 2j, coordinate d/2 + j is wick's 2j + 1.
    let embed = marian("model.shared.weight");
    let wick_embed = &ckpt["embed.weight"].1;
    for row in [0, 5] {
        for j in 0..d / 2 {
            assert_eq!(embed[row * d + j], wick_embed[row * d + 2 * j]);
            assert_eq!(embed[row * d + d / 2 + j], wick_embed[row * d + 2 * j + 1]);
        }
    }
    // Fused Q/K/V rows split; K's first row reads permuted columns.
    let k = marian("model.encoder.layers.0.self_attn.k_proj.weight");
    let qkv = &ckpt["encoder.layers.0.self_attn.qkv_proj.weight"].1;
    assert_eq!(k[1], qkv[d * d + 2]);
    assert_eq!(
        tensors["model.decoder.layers.1.encoder_attn.v_proj.bias"].dims(),
        [d]
    );
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    for needle in [
        "\"model_type\": \"marian\"",
        "\"activation_function\": \"relu\"",
        "\"decoder_start_token_id\": 1",
        "\"scale_embedding\": true",
    ] {
        assert!(config.contains(needle), "{needle} in {config}");
    }
    let tokenizer = std::fs::read_to_string(out.join("tokenizer.json")).unwrap();
    assert!(
        tokenizer.contains("TemplateProcessing"),
        "the source tokenizer appends </s>"
    );

    let pre = tmp.path().join("pre");
    train("configs/reverse.toml", &pre, &[]);
    let refused = err(export(&pre, &tmp.path().join("pre-hf"), &["transformers"]));
    assert!(
        refused.contains("pre") && refused.contains("ctranslate2"),
        "{refused}"
    );
    assert!(
        !tmp.path().join("pre-hf").exists(),
        "nothing written on refusal"
    );
    let refused = err(export(
        &run,
        &tmp.path().join("q"),
        &["transformers", "--quantization", "int8"],
    ));
    assert!(refused.contains("--quantization"), "{refused}");
}

#[test]
fn rnn_runs_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("rnn");
    train("configs/reverse-rnn.toml", &run, &[]);
    let out = tmp.path().join("ct2");
    let refused = err(export(&run, &out, &["ctranslate2"]));
    assert!(
        refused.contains("arch = \"rnn\"") && refused.contains("CTranslate2"),
        "{refused}"
    );
    assert!(!out.exists(), "nothing written on refusal");
    let refused = err(export(&run, &out, &["onnx"]));
    assert!(refused.contains("onnx"), "{refused}");
}

/// A benchmark preset written as a run (`bench decode --preset tiny --write-run DIR`) is a
/// run like any other: it translates, and it exports with the preset's vocabulary size, so
/// that another engine can be timed on the same model. An existing directory is refused.
#[test]
fn a_preset_written_as_a_run_translates_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("tiny");
    let run_arg = run.to_str().unwrap();
    let args = [
        "bench",
        "decode",
        "--preset",
        "tiny",
        "--write-run",
        run_arg,
    ];
    ok(wick(&args));
    let weights = checkpoint(&run);
    assert!(weights.values().any(|(shape, _)| shape == &[8000, 128]));
    let text = ok(wick(&[
        "translate",
        "--run",
        run_arg,
        "--beam",
        "1",
        "a b c",
    ]));
    assert_eq!(text.lines().count(), 1, "{text}");
    let out = tmp.path().join("ct2");
    ok(export(&run, &out, &["ctranslate2"]));
    let vocab: Vec<String> =
        serde_json::from_slice(&std::fs::read(out.join("shared_vocabulary.json")).unwrap())
            .unwrap();
    assert_eq!(vocab.len(), 8000);
    assert_eq!((vocab[2].as_str(), vocab[5].as_str()), ("</s>", "▁w5"));
    assert_eq!(
        read_model_bin(&out.join("model.bin")).spec,
        "TransformerSpec"
    );
    let refused = err(wick(&args));
    assert!(refused.contains("already exists"), "{refused}");
}
