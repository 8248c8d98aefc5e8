//! wick's BLEU and chrF against sacreBLEU 2.6.0 on 300 generated corpora
//! (`scripts/reference/sacrebleu_fixtures.py` wrote the fixture with sacreBLEU itself).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use serde_json::Value;
use wick_metrics::{BleuOptions, BleuTokenizer, ChrfOptions, corpus_bleu, corpus_chrf};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bleu_and_chrf_equal_sacrebleu() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sacrebleu.json"
    ))
    .expect("fixture");
    let fixture: Value = serde_json::from_str(&text).expect("json");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 300);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let hyps = strings(&case["hyps"]);
        let refs: Vec<Vec<String>> = case["refs"]
            .as_array()
            .expect("refs")
            .iter()
            .map(strings)
            .collect();
        for (tok, name) in [
            (BleuTokenizer::Thirteen, "13a"),
            (BleuTokenizer::Intl, "intl"),
            (BleuTokenizer::Char, "char"),
            (BleuTokenizer::None, "none"),
        ] {
            for lowercase in [false, true] {
                let key = format!("{name}{}", if lowercase { "-lc" } else { "" });
                let want = &case["bleu"][&key];
                let got = corpus_bleu(
                    &hyps,
                    &refs,
                    BleuOptions {
                        tokenize: tok,
                        lowercase,
                    },
                );
                let score = want["score"].as_f64().expect("score");
                if (got.score - score).abs() > 0.01
                    || got.hyp_len as u64 != want["hyp_len"]
                    || got.ref_len as u64 != want["ref_len"]
                {
                    failures.push(format!(
                        "case {i} BLEU {key}: wick {:.4} ({}/{}) vs sacreBLEU {score:.4} ({}/{})",
                        got.score, got.hyp_len, got.ref_len, want["hyp_len"], want["ref_len"]
                    ));
                }
                let sig = want["signature"].as_str().expect("sig");
                if got.signature != format!("BLEU|{sig}") {
                    failures.push(format!(
                        "case {i} BLEU {key}: signature {} vs BLEU|{sig}",
                        got.signature
                    ));
                }
            }
        }
        for word_order in [0, 2] {
            for lowercase in [false, true] {
                let key = format!("{word_order}{}", if lowercase { "-lc" } else { "" });
                let want = &case["chrf"][&key];
                let got = corpus_chrf(
                    &hyps,
                    &refs,
                    ChrfOptions {
                        word_order,
                        lowercase,
                        ..Default::default()
                    },
                );
                let score = want["score"].as_f64().expect("score");
                if (got.score - score).abs() > 0.01 {
                    failures.push(format!(
                        "case {i} chrF {key}: wick {:.4} vs sacreBLEU {score:.4}",
                        got.score
                    ));
                }
                let name = if word_order > 0 { "chrF2++" } else { "chrF2" };
                let sig = want["signature"].as_str().expect("sig");
                if got.signature != format!("{name}|{sig}") {
                    failures.push(format!(
                        "case {i} chrF {key}: signature {} vs {name}|{sig}",
                        got.signature
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
