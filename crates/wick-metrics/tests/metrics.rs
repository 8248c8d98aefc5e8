//! BLEU and chrF against known answers from sacreBLEU 2.6.0 (`../shared/data/README.md` and
//! `sacrebleu` run on the same strings).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use wick_metrics::{
    BleuOptions, BleuTokenizer, ChrfOptions, bleu_chrf_intervals, bleu_segments, chrf_segments,
    corpus_bleu, corpus_chrf, tokenize,
};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn known_answer_from_sacrebleu() {
    let refs = vec![s(&[
        "Ein Mann fährt Fahrrad.",
        "Zwei Hunde spielen im Schnee.",
        "Eine Frau liest ein Buch im Park.",
    ])];
    let hyps = s(&[
        "Ein Mann fährt ein Fahrrad.",
        "Zwei Hunde spielen im Schnee.",
        "Eine Frau liest im Park.",
    ]);
    let b = corpus_bleu(&hyps, &refs, BleuOptions::default());
    assert_eq!(format!("{:.2}", b.score), "58.56");
    let p: Vec<String> = b.precisions.iter().map(|p| format!("{p:.1}")).collect();
    assert_eq!(p, ["94.4", "80.0", "58.3", "33.3"]);
    assert_eq!(format!("{:.3}", b.brevity_penalty), "0.946");
    assert_eq!((b.hyp_len, b.ref_len), (18, 19));
    assert_eq!(
        b.signature,
        "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    );
    let c = corpus_chrf(&hyps, &refs, ChrfOptions::default());
    assert_eq!(format!("{:.2}", c.score), "81.87");
    assert_eq!(
        c.signature,
        "chrF2|nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"
    );
}

#[test]
fn identity_scores_100_and_empty_scores_0() {
    let refs = vec![s(&["A quick test.", "Another line, with 1,000 things."])];
    assert!((corpus_bleu(&refs[0], &refs, BleuOptions::default()).score - 100.0).abs() < 1e-9);
    assert!((corpus_chrf(&refs[0], &refs, ChrfOptions::default()).score - 100.0).abs() < 1e-9);
    let empty = s(&["", ""]);
    assert_eq!(
        corpus_bleu(&empty, &refs, BleuOptions::default()).score,
        0.0
    );
    assert_eq!(
        corpus_chrf(&empty, &refs, ChrfOptions::default()).score,
        0.0
    );
}

#[test]
fn thirteen_a_tokenizer_matches_mteval() {
    assert_eq!(
        tokenize(
            BleuTokenizer::Thirteen,
            "Hello, world! It's 1,000.5 euros (approx.)"
        ),
        "Hello , world ! It's 1,000.5 euros ( approx . )"
    );
    assert_eq!(
        tokenize(BleuTokenizer::Thirteen, "a-b 3-4 &quot;x&quot; &amp;"),
        "a-b 3 - 4 \" x \" &"
    );
    assert_eq!(tokenize(BleuTokenizer::Char, "ab c"), "a b   c");
}

#[test]
fn bootstrap_intervals_are_seeded_and_bracket_the_score() {
    let hyps: Vec<String> = (0..60)
        .map(|i| format!("the cat number {} sat on {} mats", i % 7, i % 3))
        .collect();
    let refs = vec![
        (0..60)
            .map(|i| format!("the cat number {} sat on the {} mats", i % 5, i % 3))
            .collect::<Vec<_>>(),
    ];
    let opts = BleuOptions::default();
    let b = bleu_segments(&hyps, &refs, opts);
    let c = chrf_segments(&hyps, &refs, ChrfOptions::default());
    let (b1, c1) = bleu_chrf_intervals(&b, &c, opts, 1000, 7);
    let (b2, _) = bleu_chrf_intervals(&b, &c, opts, 1000, 7);
    let (b3, _) = bleu_chrf_intervals(&b, &c, opts, 1000, 8);
    assert_eq!(
        (b1.low, b1.high),
        (b2.low, b2.high),
        "same seed, same interval"
    );
    assert_ne!((b1.low, b1.high), (b3.low, b3.high), "the seed is used");
    let bleu = corpus_bleu(&hyps, &refs, opts).score;
    assert!(b1.low < bleu && bleu < b1.high, "{b1:?} vs {bleu}");
    assert!(c1.low < c1.mean && c1.mean < c1.high, "{c1:?}");
    // Identical segments leave nothing to resample: a zero-width interval at the score.
    let same = vec![b[0]; 50];
    let same_c = vec![c[0].clone(); 50];
    let (bs, _) = bleu_chrf_intervals(&same, &same_c, opts, 200, 1);
    let one = corpus_bleu(
        &vec![hyps[0].clone(); 50],
        &[vec![refs[0][0].clone(); 50]],
        opts,
    );
    assert!((bs.low - one.score).abs() < 1e-9 && (bs.high - one.score).abs() < 1e-9);
}
