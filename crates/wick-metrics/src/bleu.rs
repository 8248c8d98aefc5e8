//! Corpus BLEU (Papineni et al., 2002) with sacreBLEU's exponential smoothing and signature.

use std::collections::HashMap;

use serde::Serialize;

use crate::tokenize::{BleuTokenizer, SACREBLEU_VERSION, py_split, tokenize, word_ngrams};

/// Options of a BLEU computation.
#[derive(Clone, Copy, Debug)]
pub struct BleuOptions {
    pub tokenize: BleuTokenizer,
    pub lowercase: bool,
}

impl Default for BleuOptions {
    fn default() -> Self {
        Self {
            tokenize: BleuTokenizer::Thirteen,
            lowercase: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BleuScore {
    pub score: f64,
    /// Modified n-gram precisions, 1- to 4-grams, in percent (smoothed).
    pub precisions: [f64; 4],
    pub brevity_penalty: f64,
    pub hyp_len: usize,
    pub ref_len: usize,
    pub signature: String,
}

impl BleuScore {
    /// sacreBLEU's text line: `BLEU = 58.56 94.4/80.0/58.3/33.3 (BP = 0.946 …)`.
    pub fn format(&self) -> String {
        let p = self
            .precisions
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join("/");
        let ratio = if self.ref_len > 0 {
            self.hyp_len as f64 / self.ref_len as f64
        } else {
            0.0
        };
        format!(
            "BLEU = {:.2} {p} (BP = {:.3} ratio = {ratio:.3} hyp_len = {} ref_len = {})",
            self.score, self.brevity_penalty, self.hyp_len, self.ref_len
        )
    }
}

/// Sufficient statistics of BLEU for one segment or a corpus.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BleuStats {
    pub hyp_len: usize,
    pub ref_len: usize,
    pub correct: [usize; 4],
    pub total: [usize; 4],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.hyp_len += o.hyp_len;
        self.ref_len += o.ref_len;
        for n in 0..4 {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

fn preprocess(opts: BleuOptions, s: &str) -> String {
    let s = if opts.lowercase {
        s.to_lowercase()
    } else {
        s.to_string()
    };
    tokenize(opts.tokenize, s.trim_end())
}

/// BLEU statistics of one hypothesis against its references.
pub fn bleu_segment(opts: BleuOptions, hyp: &str, refs: &[&str]) -> BleuStats {
    let hyp = preprocess(opts, hyp);
    let hyp_tokens: Vec<&str> = py_split(&hyp).collect();
    let refs: Vec<String> = refs.iter().map(|r| preprocess(opts, r)).collect();
    let mut max_ref_counts: [HashMap<Vec<&str>, usize>; 4] = Default::default();
    let mut ref_lens = Vec::new();
    for r in &refs {
        let toks: Vec<&str> = py_split(r).collect();
        ref_lens.push(toks.len());
        for (n, counts) in max_ref_counts.iter_mut().enumerate() {
            for (g, c) in word_ngrams(&toks, n + 1) {
                let e = counts.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
    }
    // Closest reference length; ties go to the shorter reference.
    let hyp_len = hyp_tokens.len();
    let mut ref_len = 0;
    let mut best_diff = usize::MAX;
    for &l in &ref_lens {
        let diff = hyp_len.abs_diff(l);
        if diff < best_diff || (diff == best_diff && l < ref_len) {
            best_diff = diff;
            ref_len = l;
        }
    }
    let mut stats = BleuStats {
        hyp_len,
        ref_len,
        ..Default::default()
    };
    for (n, ref_counts) in max_ref_counts.iter().enumerate() {
        let hyp_counts = word_ngrams(&hyp_tokens, n + 1);
        stats.total[n] = hyp_len.saturating_sub(n);
        stats.correct[n] = hyp_counts
            .iter()
            .map(|(g, &c)| c.min(*ref_counts.get(g).unwrap_or(&0)))
            .sum();
    }
    stats
}

/// BLEU from corpus statistics with sacreBLEU's `exp` smoothing and no effective order.
pub fn bleu_from_stats(stats: &BleuStats, opts: BleuOptions, n_refs: usize) -> BleuScore {
    let (sys, rl) = (stats.hyp_len as f64, stats.ref_len as f64);
    let bp = if sys < rl {
        if sys > 0.0 {
            (1.0 - rl / sys).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; 4];
    let signature = format!(
        "BLEU|nrefs:{n_refs}|case:{}|eff:no|tok:{}|smooth:exp|version:{SACREBLEU_VERSION}",
        if opts.lowercase { "lc" } else { "mixed" },
        opts.tokenize.name()
    );
    let mut score = 0.0;
    if stats.correct.iter().any(|&c| c > 0) {
        let mut smooth = 1.0;
        for (n, precision) in precisions.iter_mut().enumerate() {
            if stats.total[n] == 0 {
                break;
            }
            *precision = if stats.correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * stats.total[n] as f64)
            } else {
                100.0 * stats.correct[n] as f64 / stats.total[n] as f64
            };
        }
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        score = bp * (log_sum / 4.0).exp();
    }
    BleuScore {
        score,
        precisions,
        brevity_penalty: bp,
        hyp_len: stats.hyp_len,
        ref_len: stats.ref_len,
        signature,
    }
}

/// `refs[k][i]` is the k-th reference of hypothesis `i`.
pub fn corpus_bleu(hyps: &[String], refs: &[Vec<String>], opts: BleuOptions) -> BleuScore {
    let mut total = BleuStats::default();
    for s in bleu_segments(hyps, refs, opts) {
        total += s;
    }
    bleu_from_stats(&total, opts, refs.len())
}

/// BLEU statistics of every segment; `refs[k][i]` is the k-th reference of hypothesis `i`.
pub fn bleu_segments(hyps: &[String], refs: &[Vec<String>], opts: BleuOptions) -> Vec<BleuStats> {
    hyps.iter()
        .enumerate()
        .map(|(i, h)| {
            let rs: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
            bleu_segment(opts, h, &rs)
        })
        .collect()
}
