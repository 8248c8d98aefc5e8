#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic
use std::io::Write;
use std::path::Path;

use candle_core::Device;
use wick_data::batcher::{batch_cost, epoch_seed, token_batches};
use wick_data::synthetic::{SyntheticSpec, Task};
use wick_data::tokenizer::SPECIALS;
use wick_data::{Batch, CorpusSpec, DataError, Example, SubwordTokenizer};

fn corpus() -> Vec<String> {
    let base = [
        "The cat sat on the mat.",
        "Le chat est assis sur le tapis.",
        "I don't know what you're talking about!",
        "Je ne sais pas de quoi tu parles !",
        "She bought 3 apples, 2 pears and 1,000 grapes.",
        "Elle a acheté 3 pommes, 2 poires et 1 000 raisins.",
        "Où est la gare ? Près de l'hôtel.",
    ];
    (0..40)
        .flat_map(|i| base.iter().map(move |s| format!("{s} {i}")))
        .collect()
}

fn tokenizer() -> SubwordTokenizer {
    let c = corpus();
    SubwordTokenizer::train(c.iter().map(String::as_str), 400, 2).expect("tokenizer trains")
}

#[test]
fn tokenizer_round_trips_unicode_exactly() {
    let tok = tokenizer();
    for text in [
        "The cat sat on the mat.",
        "Où est la gare ? Près de l'hôtel.",
        "Ünïcödé never seen: 日本語のテキスト, emoji 🦀🚀, Ελληνικά, عربى.",
        "Mixed   spacing\tand tabs",
        "«Guillemets» — dashes – and … ellipses",
        "a",
    ] {
        let ids = tok.encode(text).expect("encode");
        assert!(!ids.contains(&SPECIALS.unk), "{text:?} produced <unk>");
        assert_eq!(tok.decode(&ids).expect("decode"), text);
    }
}

#[test]
fn tokenizer_save_load_and_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = tokenizer();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).expect("save");
    let back = SubwordTokenizer::load(&path).expect("load");
    assert_eq!(
        back.encode("Le chat 🦀").expect("e"),
        tok.encode("Le chat 🦀").expect("e")
    );
    assert_eq!(back.vocab_size(), tok.vocab_size());

    // A tokenizer whose special tokens are elsewhere is refused with the reason.
    let json = std::fs::read_to_string(&path).expect("read");
    let foreign = json.replacen("\"<pad>\"", "\"[PAD]\"", usize::MAX);
    let fpath = dir.path().join("foreign.json");
    std::fs::write(&fpath, foreign).expect("write");
    let err = SubwordTokenizer::load(&fpath)
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("foreign.json") && err.contains("<pad>"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{not json").expect("write");
    let err = SubwordTokenizer::load(&garbage)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("garbage.json"), "{err}");
}

/// The stand-in tokenizer of benchmark models: exactly the size asked for, specials first,
/// every token distinct, saved and loaded as any other, and text still round-trips.
#[test]
fn numbered_tokenizer_has_the_size_asked_for() {
    let tok = SubwordTokenizer::numbered(300).expect("numbered");
    assert_eq!(tok.vocab_size(), 300);
    let vocab = tok.vocabulary().expect("vocabulary");
    assert_eq!(&vocab[..6], ["<pad>", "<s>", "</s>", "<unk>", "▁", "▁w5"]);
    assert_eq!((vocab[43].as_str(), vocab[44].as_str()), ("▁w43", "<0x00>"));
    assert_eq!(vocab[299], "<0xFF>");
    let distinct: std::collections::HashSet<&String> = vocab.iter().collect();
    assert_eq!(distinct.len(), 300);
    let text = "Où est la gare ? 🦀";
    let ids = tok.encode(text).expect("encode");
    assert!(!ids.contains(&SPECIALS.unk));
    assert_eq!(tok.decode(&ids).expect("decode"), text);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).expect("save");
    let back = SubwordTokenizer::load(&path).expect("load");
    assert_eq!(back.vocabulary().expect("vocabulary"), vocab);
    assert_eq!(
        SubwordTokenizer::numbered(16_000)
            .expect("numbered")
            .vocab_size(),
        16_000
    );
    let err = SubwordTokenizer::numbered(260).expect_err("too small");
    assert!(err.to_string().contains("261"), "{err}");
}

fn lengths() -> Vec<(usize, usize)> {
    (0..500)
        .map(|i| (1 + (i * 7) % 37, 1 + (i * 13) % 41))
        .collect()
}

#[test]
fn batches_respect_the_token_budget_and_cover_every_example_once() {
    let l = lengths();
    for budget in [41, 100, 333, 1000] {
        for max_sentences in [3, 64, usize::MAX] {
            let batches = token_batches(&l, budget, max_sentences, Some(7)).expect("batches");
            let mut seen = vec![0; l.len()];
            for b in &batches {
                assert!(!b.is_empty());
                assert!(
                    batch_cost(&l, b) <= budget,
                    "cost {} > {budget}",
                    batch_cost(&l, b)
                );
                assert!(b.len() <= max_sentences);
                for &i in b {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&n| n == 1));
        }
    }
    let err =
        token_batches(&l, 30, 10, None).expect_err("an example of 41 positions cannot fit 30");
    assert!(err.to_string().contains("token budget"), "{err}");
}

#[test]
fn same_seed_same_batches_other_seed_other_order() {
    let l = lengths();
    let a = token_batches(&l, 300, 64, Some(epoch_seed(1, 0))).expect("a");
    let b = token_batches(&l, 300, 64, Some(epoch_seed(1, 0))).expect("b");
    let c = token_batches(&l, 300, 64, Some(epoch_seed(1, 1))).expect("c");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn batch_shift_padding_and_masks_by_hand() {
    let e1 = Example {
        id: 4,
        src: vec![10, 11, 12],
        tgt: vec![20, 21],
    };
    let e2 = Example {
        id: 9,
        src: vec![13],
        tgt: vec![22, 23, 24, 25],
    };
    let b = Batch::new(&[&e1, &e2], SPECIALS, &Device::Cpu).expect("batch");
    let (pad, bos, eos) = (SPECIALS.pad, SPECIALS.bos, SPECIALS.eos);
    assert_eq!(b.source.ids, vec![4, 9]);
    assert_eq!(
        b.source.src.to_vec2::<u32>().expect("src"),
        vec![vec![10, 11, 12, eos], vec![13, eos, pad, pad]]
    );
    assert_eq!(
        b.source.src_mask.to_vec2::<f32>().expect("m"),
        vec![vec![1., 1., 1., 1.], vec![1., 1., 0., 0.]]
    );
    assert_eq!(
        b.tgt_in.to_vec2::<u32>().expect("ti"),
        vec![vec![bos, 20, 21, pad, pad], vec![bos, 22, 23, 24, 25]]
    );
    assert_eq!(
        b.tgt_out.to_vec2::<u32>().expect("to"),
        vec![vec![20, 21, eos, pad, pad], vec![22, 23, 24, 25, eos]]
    );
    assert_eq!(
        b.tgt_mask.to_vec2::<f32>().expect("tm"),
        vec![vec![1., 1., 1., 0., 0.], vec![1., 1., 1., 1., 1.]]
    );
    assert_eq!(b.source.n_src_tokens, 6);
    assert_eq!(b.n_tgt_tokens, 8);
    assert_eq!(b.source.src_lens, vec![4, 2]);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write");
    p
}

fn error_of(spec: CorpusSpec) -> String {
    spec.read().expect_err("must fail").to_string()
}

#[test]
fn corpus_errors_name_file_line_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let e = error_of(CorpusSpec::Tsv(d.join("missing.tsv")));
    assert!(
        e.contains("missing.tsv") && e.contains("cannot open"),
        "{e}"
    );

    let p = write(d, "notab.tsv", b"a\tb\nno tab here\n");
    let e = error_of(CorpusSpec::Tsv(p));
    assert!(e.contains("notab.tsv:2") && e.contains("found 1"), "{e}");

    let p = write(d, "three.tsv", b"a\tb\tc\n");
    assert!(error_of(CorpusSpec::Tsv(p)).contains("three.tsv:1"));

    let p = write(d, "empty_side.tsv", b"a\tb\nc\t  \n");
    let e = error_of(CorpusSpec::Tsv(p));
    assert!(
        e.contains("empty_side.tsv:2") && e.contains("empty target"),
        "{e}"
    );

    let p = write(d, "latin1.tsv", b"ok\tfine\ncaf\xe9\tcafe\n");
    let e = error_of(CorpusSpec::Tsv(p));
    assert!(
        e.contains("latin1.tsv:2") && e.contains("invalid UTF-8"),
        "{e}"
    );

    let src = write(d, "x.en", b"one\ntwo\nthree\n");
    let tgt = write(d, "x.fr", b"un\ndeux\n");
    let e = error_of(CorpusSpec::Files { src, tgt });
    assert!(
        e.contains("x.en") && e.contains("x.fr") && e.contains("3 lines") && e.contains("has 2"),
        "{e}"
    );

    let p = write(d, "empty.tsv", b"");
    assert!(matches!(
        CorpusSpec::Tsv(p).read(),
        Err(DataError::Empty { .. })
    ));
}

#[test]
fn reads_gzip_crlf_and_bom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all("\u{feff}Hello\tBonjour\r\nThanks\tMerci\r\n".as_bytes())
        .expect("gz");
    let p = write(dir.path(), "c.tsv.gz", &gz.finish().expect("gz"));
    let pairs = CorpusSpec::Tsv(p).read().expect("read");
    assert_eq!(pairs.len(), 2);
    assert_eq!(
        (pairs[0].src.as_str(), pairs[0].tgt.as_str()),
        ("Hello", "Bonjour")
    );
    assert_eq!(pairs[1].tgt, "Merci");

    let truncated = write(
        dir.path(),
        "t.tsv.gz",
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2],
    );
    let e = error_of(CorpusSpec::Tsv(truncated));
    assert!(e.contains("t.tsv.gz"), "{e}");
}

#[test]
fn reads_json_lines_with_configured_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = concat!(
        "{\"en\": \"Two dogs run.\", \"de\": \"Zwei Hunde rennen.\", \"id\": 1}\n",
        "{\"en\": \"A \\\"quoted\\\" cat\\tsits.\", \"de\": \"Eine Katze sitzt.\"}\n",
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).expect("gz");
    let p = write(dir.path(), "train.jsonl.gz", &gz.finish().expect("gz"));
    let spec: CorpusSpec =
        toml::from_str(&format!("jsonl = {:?}\nsrc = \"en\"\ntgt = \"de\"\n", p)).expect("toml");
    assert!(matches!(spec, CorpusSpec::Jsonl { .. }), "{spec:?}");
    let pairs = spec.read().expect("read");
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].src, "A \"quoted\" cat\tsits.");
    // Swapping the fields swaps the direction.
    let rev = CorpusSpec::Jsonl {
        jsonl: p.clone(),
        src: "de".into(),
        tgt: "en".into(),
    };
    assert_eq!(rev.read().expect("read")[0].src, "Zwei Hunde rennen.");

    let bad = write(
        dir.path(),
        "bad.jsonl",
        b"{\"en\": \"ok\", \"de\": \"gut\"}\n{\"en\": \"no de\"}\n{not json\n[1, 2]\n{\"en\": 5, \"de\": \"x\"}\n",
    );
    let spec = CorpusSpec::Jsonl {
        jsonl: bad,
        src: "en".into(),
        tgt: "de".into(),
    };
    let e = error_of(spec.clone());
    assert!(e.contains("bad.jsonl:2") && e.contains("\"de\""), "{e}");
    let scan = spec.scan().expect("scan");
    assert_eq!(scan.pairs.len(), 1);
    let lines: Vec<usize> = scan.bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 3, 4, 5]);
    assert!(scan.bad[1].detail.contains("not valid JSON"));
}

#[test]
fn synthetic_tasks_are_seeded_and_held_out() {
    let spec = SyntheticSpec {
        task: Task::Reverse,
        n_symbols: 6,
        min_len: 3,
        max_len: 8,
        n_train: 300,
        n_dev: 50,
        n_test: 100,
    };
    let a = spec.generate(5).expect("gen");
    let b = spec.generate(5).expect("gen");
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    let train: std::collections::HashSet<_> = a.train.iter().map(|p| p.src.clone()).collect();
    assert!(a.test.iter().all(|p| !train.contains(&p.src)));
    for p in &a.train {
        let rev: Vec<&str> = p.src.split(' ').rev().collect();
        assert_eq!(p.tgt, rev.join(" "));
    }
    let copy = SyntheticSpec {
        task: Task::Copy,
        ..spec
    };
    assert!(
        copy.generate(1)
            .expect("gen")
            .train
            .iter()
            .all(|p| p.src == p.tgt)
    );
}
