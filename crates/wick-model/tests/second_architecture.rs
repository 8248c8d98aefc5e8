//! The model contract is not Transformer-shaped: a deliberately small second architecture,
//! defined here and registered at run time, trains, resumes exactly, decodes, averages and
//! plots its attention through `wick-train` and the `wick` commands, none of which changes.
//!
//! `arch = "bag"`: the encoder is the source embeddings; the decoder state at position t is
//! the mean of the target embeddings up to t (a running sum is its decoding cache), which
//! queries the source with one dot-product attention; `tanh(W [state; context])` goes to an
//! output layer tied to the target embeddings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};
use std::sync::Once;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use clap::Parser;
use serde::{Deserialize, Serialize};
use wick_model::layers::{Dropout, DropoutRng, Linear};
use wick_model::mask::key_padding_bias;
use wick_model::{
    ArchConfig, Architecture, DataShape, KeyError, Memory, OutputLayer, Seq2Seq, VocabSizes, ops,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BagConfig {
    /// Embedding width.
    d_model: usize,
    /// Dropout on the decoder state.
    dropout: f32,
}

impl Default for BagConfig {
    fn default() -> Self {
        Self {
            d_model: 32,
            dropout: 0.1,
        }
    }
}

impl ArchConfig for BagConfig {
    const NAME: &'static str = "bag";
    const ABOUT: &'static str =
        "embedding-bag encoder, running-mean decoder, one dot-product attention";
    type Model = Bag;

    fn validate(&self, _data: &DataShape) -> std::result::Result<(), KeyError> {
        if self.d_model == 0 {
            return Err(KeyError::new("d_model", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(KeyError::new("dropout", "must be in [0, 1)"));
        }
        Ok(())
    }

    fn build(&self, vocab: VocabSizes, dropout: DropoutRng, vb: VarBuilder) -> Result<Bag> {
        let d = self.d_model;
        let stdev = (d as f64).powf(-0.5);
        let init = Init::Randn { mean: 0.0, stdev };
        Ok(Bag {
            vocab,
            src_embed: vb
                .pp("src_embed")
                .get_with_hints((vocab.src, d), "weight", init)?,
            tgt_embed: vb
                .pp("tgt_embed")
                .get_with_hints((vocab.tgt, d), "weight", init)?,
            query: Linear::new(d, d, true, vb.pp("query"))?,
            combine: Linear::new(2 * d, d, true, vb.pp("combine"))?,
            dropout: Dropout::new(self.dropout, dropout.clone()),
            rng: dropout,
        })
    }
}

#[derive(Clone, Debug)]
struct Bag {
    vocab: VocabSizes,
    /// `(V_src, d)`
    src_embed: Tensor,
    /// `(V_tgt, d)`, also the output layer.
    tgt_embed: Tensor,
    query: Linear,
    combine: Linear,
    dropout: Dropout,
    rng: DropoutRng,
}

/// Running sum of the target embeddings fed so far, `(b, d)`, and their number.
struct BagCache {
    sum: Option<Tensor>,
    count: usize,
}

impl Bag {
    fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = table.dim(1)?;
        table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))
    }

    /// States `(b, t, d)` → outputs `(b, t, d)` and attention `(b, t, s)`.
    fn attend(&self, memory: &Memory, states: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let states = self.dropout.forward_t(states, train)?;
        let d = states.dim(2)?;
        let q = self.query.forward(&states)?; // (b, t, d)
        let scores = (q.matmul(&memory.states.t()?)? * (d as f64).powf(-0.5))?; // (b, t, s)
        let bias = memory.src_bias.squeeze(1)?; // (b, 1, s)
        let probs = ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
        let context = probs.matmul(&memory.states)?; // (b, t, d)
        let out = self
            .combine
            .forward(&Tensor::cat(&[&states, &context], D::Minus1)?)?;
        Ok((out.tanh()?, probs))
    }

    /// The running means of the target embeddings, `(b, t, d)`.
    fn running_means(&self, tgt_in: &Tensor) -> Result<Tensor> {
        let (_, t) = tgt_in.dims2()?;
        let sums = Self::embed(&self.tgt_embed, tgt_in)?.cumsum(1)?; // (b, t, d)
        let counts: Vec<f32> = (1..=t).map(|i| 1.0 / i as f32).collect();
        let inv = Tensor::from_vec(counts, (1, t, 1), tgt_in.device())?;
        sums.broadcast_mul(&inv)
    }
}

impl Seq2Seq for Bag {
    type Cache = BagCache;

    fn vocab(&self) -> VocabSizes {
        self.vocab
    }

    fn device(&self) -> &Device {
        self.tgt_embed.device()
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    fn max_positions(&self) -> Option<usize> {
        None
    }

    fn encode(&self, src: &Tensor, src_mask: &Tensor, _train: bool) -> Result<Memory> {
        Ok(Memory {
            states: Self::embed(&self.src_embed, src)?,
            src_mask: src_mask.clone(),
            src_bias: key_padding_bias(src_mask)?,
            extra: Vec::new(),
        })
    }

    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.attend(memory, &self.running_means(tgt_in)?, train)?.0)
    }

    fn output_layer(&self) -> OutputLayer {
        OutputLayer {
            weight: self.tgt_embed.clone(),
            bias: None,
        }
    }

    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        let (_, probs) = self.attend(memory, &self.running_means(tgt_in)?, false)?;
        Ok(vec![probs.unsqueeze(1)?]) // one layer, one head: (b, 1, t, s)
    }

    fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            query: self.query.for_decoding()?,
            combine: self.combine.for_decoding()?,
            ..self.clone()
        })
    }

    fn start_decoding(&self, _memory: &Memory) -> Result<BagCache> {
        Ok(BagCache {
            sum: None,
            count: 0,
        })
    }

    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut BagCache,
    ) -> Result<Tensor> {
        let e = Self::embed(&self.tgt_embed, tokens)?.squeeze(1)?; // (b, d)
        let sum = match cache.sum.take() {
            Some(s) => (s + e)?,
            None => e,
        };
        cache.count += 1;
        let mean = (&sum / cache.count as f64)?.unsqueeze(1)?; // (b, 1, d)
        cache.sum = Some(sum);
        let (out, _) = self.attend(memory, &mean, false)?;
        self.output_layer().project(&out.squeeze(1)?) // (b, V)
    }

    fn select_cache(&self, cache: &BagCache, indices: &Tensor) -> Result<BagCache> {
        Ok(BagCache {
            sum: cache
                .sum
                .as_ref()
                .map(|s| s.index_select(indices, 0))
                .transpose()?,
            count: cache.count,
        })
    }

    fn narrow_cache(&self, cache: &BagCache, start: usize, len: usize) -> Result<BagCache> {
        Ok(BagCache {
            sum: cache
                .sum
                .as_ref()
                .map(|s| s.narrow(0, start, len))
                .transpose()?,
            count: cache.count,
        })
    }
}

fn register_bag() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        wick_model::register(Architecture::of::<BagConfig>()).expect("register bag");
    });
}

fn wick(args: &[&str]) -> anyhow::Result<()> {
    let args = std::iter::once("wick").chain(args.iter().copied());
    wick_cli::run(wick_cli::args::Cli::try_parse_from(args)?)
}

const CONFIG: &str = r#"
[data.synthetic]
task = "reverse"
n_symbols = 8
min_len = 2
max_len = 5
n_train = 2000
n_dev = 50
n_test = 50

[data]
vocab_size = 300
min_frequency = 1
max_len = 12

[model]
arch = "bag"
d_model = 32
dropout = 0.1

[train]
max_steps = 60
max_epochs = 0
batch_tokens = 400
lr = 3e-3
warmup_steps = 10
validate_every = 20
keep_last = 3
best_metric = "loss"
"#;

fn setup() -> (tempfile::TempDir, PathBuf) {
    register_bag();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bag.toml");
    std::fs::write(&config, CONFIG).unwrap();
    (dir, config)
}

fn run_dir(root: &Path, name: &str) -> String {
    root.join(name).display().to_string()
}

/// The weights of a run's last checkpoint, as raw bits.
fn weights(run: &str) -> Vec<(String, Vec<u32>)> {
    let path = Path::new(run).join("checkpoints/last.safetensors");
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, v.iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_second_architecture_trains_resumes_decodes_and_plots_through_wick() -> anyhow::Result<()> {
    let (dir, config) = setup();
    let config = config.to_str().unwrap();
    let straight = run_dir(dir.path(), "straight");
    wick(&[
        "train",
        "--config",
        config,
        "--run-dir",
        &straight,
        "--samples",
        "0",
    ])?;

    // The run directory names the architecture; the loss fell (it learns something).
    let manifest = std::fs::read_to_string(Path::new(&straight).join("manifest.json"))?;
    assert!(manifest.contains("\"arch\": \"bag\""), "{manifest}");
    let resolved = std::fs::read_to_string(Path::new(&straight).join("config.toml"))?;
    assert!(resolved.contains("arch = \"bag\"") && resolved.contains("d_model = 32"));
    let metrics = std::fs::read_to_string(Path::new(&straight).join("metrics.jsonl"))?;
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["dev_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "dev loss {losses:?}");

    // Stopped at step 20 and resumed: the same weights, bit for bit.
    let split = run_dir(dir.path(), "split");
    wick(&[
        "train",
        "--config",
        config,
        "--run-dir",
        &split,
        "--samples",
        "0",
        "--set",
        "train.max_steps=20",
    ])?;
    wick(&[
        "train",
        "--resume",
        &split,
        "--set",
        "train.max_steps=60",
        "--samples",
        "0",
    ])?;
    assert_eq!(weights(&straight), weights(&split));

    // Decoding: translate (greedy, n-best), evaluate, average, the attention picture.
    wick(&["translate", "--run", &straight, "a b c"])?;
    wick(&[
        "translate",
        "--run",
        &straight,
        "--beam",
        "3",
        "--n-best",
        "2",
        "a b c",
    ])?;
    wick(&["evaluate", "--run", &straight, "--beam", "2"])?;
    wick(&["average", "--run", &straight, "--last", "2"])?;
    wick(&[
        "evaluate",
        "--run",
        &straight,
        "--checkpoint",
        "avg-last-2.safetensors",
    ])?;
    let svg = dir.path().join("attention.svg");
    let json = dir.path().join("attention.json");
    let (svg_s, json_s) = (svg.display().to_string(), json.display().to_string());
    wick(&[
        "translate",
        "--run",
        &straight,
        "--attention",
        &svg_s,
        "--attention-json",
        &json_s,
        "d c b a",
    ])?;
    assert!(std::fs::read_to_string(&svg)?.contains("<svg"));
    let map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let layers = map["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one attention layer");
    let heads = layers[0].as_array().unwrap();
    assert_eq!(heads.len(), 1, "one head");
    for row in heads[0].as_array().unwrap() {
        let sum: f64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5, "attention row sums to {sum}");
    }

    // The Rust API over the same run: beam 1 equals greedy, n-best scores are sorted.
    let translator =
        wick_train::Translator::from_run(&straight, wick_train::Which::Last, &Device::Cpu)?;
    let sources = ["a b c", "h g f e", "b"];
    let greedy = translator.translate(&sources)?;
    let beam1 = translator.translate_nbest(&sources)?;
    for (g, b) in greedy.iter().zip(&beam1) {
        assert_eq!(g, &b[0].text);
    }
    let nbest = translator
        .with_beam(4)?
        .with_n_best(4)?
        .translate_nbest(&sources)?;
    for list in nbest {
        assert!(list.windows(2).all(|w| w[0].score >= w[1].score));
    }
    Ok(())
}

#[test]
fn keys_of_one_architecture_are_refused_for_another() {
    register_bag();
    let e = wick_model::ModelConfig::parse("arch = \"bag\"\nn_heads = 4").unwrap_err();
    assert_eq!(e.key, "n_heads");
    assert!(e.message.contains("arch = \"transformer\""), "{e}");
    let e = wick_model::ModelConfig::parse("d_model = 32\ndropout = 0.2\nwidth = 3").unwrap_err();
    assert_eq!(e.key, "width");
    let cfg = wick_model::ModelConfig::parse("arch = \"bag\"").unwrap();
    assert_eq!(cfg.get("d_model").and_then(|v| v.as_integer()), Some(32));
    let e = cfg.validate(&DataShape::default());
    assert!(e.is_ok());
    let bad = wick_model::ModelConfig::parse("arch = \"bag\"\ndropout = 1.5").unwrap();
    assert_eq!(
        bad.validate(&DataShape::default()).unwrap_err().key,
        "dropout"
    );
}

/// The second architecture's own invariants, on both paths: cached decoding equals the
/// teacher-forced pass, and the registry builds it with the contract's `Model`.
#[test]
fn the_second_architecture_caches_exactly_on_both_paths() -> Result<()> {
    register_bag();
    let check = || -> Result<()> {
        let cfg = wick_model::ModelConfig::parse("arch = \"bag\"\ndropout = 0.0")
            .map_err(candle_core::Error::wrap)?;
        let store = wick_model::ParamStore::new(4);
        let vocab = VocabSizes { src: 20, tgt: 20 };
        let model = cfg.build(
            vocab,
            DropoutRng::new(1),
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        assert_eq!(model.arch(), "bag");
        let src = Tensor::new(&[[5u32, 9, 7, 2], [6, 2, 0, 0]], &Device::Cpu)?;
        let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 0., 0.]], &Device::Cpu)?;
        let memory = model.encode(&src, &mask, false)?;
        let tgt = Tensor::new(&[[1u32, 4, 8, 3], [1, 11, 12, 13]], &Device::Cpu)?;
        let full = model.forward_t(&memory, &tgt, false)?; // (2, 4, V)
        let laid_out = model.for_decoding()?;
        let mut cache = laid_out.start_decoding(&memory)?;
        for t in 0..4 {
            let step =
                laid_out.decode_step(&memory, &tgt.narrow(1, t, 1)?.contiguous()?, &mut cache)?;
            let want = full.narrow(1, t, 1)?.squeeze(1)?;
            let diff = (step - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "step {t}: {diff}");
        }
        Ok(())
    };
    check()?;
    ops::with_reference_ops(check)
}
