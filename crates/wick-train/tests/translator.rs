//! The Rust API: a run trained with `train`, translated with `Translator` — shared between
//! threads, independent of its thread count, and agreeing with itself across its modes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use wick_train::{Config, TrainRequest, Translator, Which, train};

const CONFIG: &str = r#"
[data.synthetic]
task = "reverse"
n_symbols = 10
min_len = 2
max_len = 6
n_train = 3000
n_dev = 50
n_test = 50

[data]
vocab_size = 300
min_frequency = 1
max_len = 14

[model]
d_model = 32
n_heads = 2
encoder_layers = 1
decoder_layers = 1
d_ff = 64
dropout = 0.0
norm = "pre"
max_positions = 32

[train]
max_steps = 150
max_epochs = 0
batch_tokens = 600
lr = 3e-3
schedule = "cosine"
warmup_steps = 30
label_smoothing = 0.0
validate_every = 150
best_metric = "loss"
"#;

fn trained(dir: &Path) -> std::path::PathBuf {
    let run = dir.join("run");
    let config = Config::from_toml(CONFIG, Path::new("reverse-small.toml"), &[]).unwrap();
    train(TrainRequest::new(config, &run)).unwrap();
    run
}

const SOURCES: [&str; 6] = ["a b c", "j i h g", "c c a b e", "d", "e f g h i j", "b a"];

#[test]
fn a_translator_is_shared_between_threads_and_independent_of_its_pool() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Translator>();

    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let two = Translator::from_run(&run, Which::Best, &Device::Cpu).unwrap();
    assert_eq!(
        two.threads(),
        Some(wick_train::translator::default_threads())
    );
    let want = two.translate(&SOURCES).unwrap();
    assert!(want.iter().any(|t| !t.is_empty()), "{want:?}");

    // One thread, or the caller's pool: the same translations.
    let one = Translator::from_run(&run, Which::Best, &Device::Cpu)
        .unwrap()
        .with_threads(1)
        .unwrap();
    assert_eq!(one.translate(&SOURCES).unwrap(), want);
    let callers = Translator::from_run(&run, Which::Best, &Device::Cpu)
        .unwrap()
        .on_callers_pool();
    assert_eq!(callers.threads(), None);
    assert_eq!(callers.translate(&SOURCES).unwrap(), want);

    // Shared by four threads at once: each gets what a lone call gets.
    let shared = Arc::new(two);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let t = Arc::clone(&shared);
            std::thread::spawn(move || t.translate(&SOURCES).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn a_translators_modes_agree() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained(dir.path());
    let greedy = Translator::from_run(&run, Which::Best, &Device::Cpu).unwrap();
    let out = greedy.translate(&SOURCES).unwrap();
    // Beam search with one beam is greedy decoding, with scores.
    let beam1 = greedy.translate_nbest(&SOURCES).unwrap();
    for (g, b) in out.iter().zip(&beam1) {
        assert_eq!(b.len(), 1);
        assert_eq!(g, &b[0].text);
    }
    // n-best lists are sorted, at most n long, and their best is the beam translation.
    let beam = Translator::from_run(&run, Which::Best, &Device::Cpu)
        .unwrap()
        .with_beam(4)
        .unwrap()
        .with_n_best(3)
        .unwrap()
        .with_length_penalty(1.0)
        .unwrap();
    let best = beam.translate(&SOURCES).unwrap();
    for (list, b) in beam.translate_nbest(&SOURCES).unwrap().iter().zip(&best) {
        assert!(!list.is_empty() && list.len() <= 3);
        assert!(list.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(&list[0].text, b);
    }
    // The attention of one translation: one row per output token (and `</s>`), one column per
    // source token (and `</s>`), every row a distribution.
    let map = greedy.attention("c a b").unwrap();
    assert_eq!(map.translation, greedy.translate(&["c a b"]).unwrap()[0]);
    assert_eq!(map.layers.len(), 1);
    for head in &map.layers[0] {
        assert_eq!(head.len(), map.tgt_tokens.len());
        for row in head {
            assert_eq!(row.len(), map.src_tokens.len());
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    // Settings are checked.
    let err = Translator::from_run(&run, Which::Best, &Device::Cpu)
        .unwrap()
        .with_n_best(5)
        .unwrap_err();
    assert!(err.to_string().contains("decode.n_best"), "{err}");
    assert!(
        Translator::from_run(&run, Which::Best, &Device::Cpu)
            .unwrap()
            .with_threads(0)
            .is_err()
    );
}

/// A translator of a run holds the weights once, in its layout, and reads the checkpoint
/// again to lay them out in another format: it gets what a translator over the loaded model
/// gets, and refuses a checkpoint rewritten in between.
#[test]
fn a_translator_of_a_run_lays_out_its_checkpoint_again() {
    use wick_train::{Run, WeightFormat};
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained(dir.path());
    let run = Run::open(&run_dir).unwrap();
    let model = run.load_model(&Which::Best, &Device::Cpu).unwrap();
    let over_model = |format| {
        Translator::from_model(&model, run.tokenizers.clone(), run.config.decode.clone())
            .unwrap()
            .with_weights(format)
            .unwrap()
            .translate(&SOURCES)
            .unwrap()
    };
    for format in [WeightFormat::Int8, WeightFormat::F32] {
        let t = Translator::from_run(&run_dir, Which::Best, &Device::Cpu)
            .unwrap()
            .with_weights(format)
            .unwrap();
        assert_eq!(t.weights(), format);
        assert_eq!(
            t.translate(&SOURCES).unwrap(),
            over_model(format),
            "{format:?}"
        );
    }

    let t = Translator::from_run(&run_dir, Which::Best, &Device::Cpu).unwrap();
    let path = t.checkpoint().unwrap().to_path_buf();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        .unwrap();
    let err = t.with_weights(WeightFormat::Int8).unwrap_err();
    assert!(err.to_string().contains("has changed"), "{err}");
}
