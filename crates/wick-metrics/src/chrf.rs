//! chrF and chrF++ (Popović, 2015, 2017) as sacreBLEU computes them, with the signature.

use std::collections::HashMap;

use serde::Serialize;

use crate::tokenize::{SACREBLEU_VERSION, py_split, word_ngrams};

/// Options of a chrF computation (β = 2 fixed, whitespace excluded, as sacreBLEU's default).
#[derive(Clone, Copy, Debug)]
pub struct ChrfOptions {
    pub char_order: usize,
    /// 0 for chrF, 2 for chrF++.
    pub word_order: usize,
    pub lowercase: bool,
}

impl Default for ChrfOptions {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            lowercase: false,
        }
    }
}

const BETA: f64 = 2.0;

#[derive(Clone, Debug, Serialize)]
pub struct ChrfScore {
    pub score: f64,
    pub signature: String,
}

fn char_ngrams(s: &str, order: usize) -> Vec<HashMap<&str, usize>> {
    // Byte offsets of every character boundary, so n-grams are slices of `s`.
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let n_chars = bounds.len() - 1;
    (1..=order)
        .map(|n| {
            let mut m = HashMap::new();
            for i in 0..(n_chars + 1).saturating_sub(n) {
                *m.entry(&s[bounds[i]..bounds[i + n]]).or_insert(0) += 1;
            }
            m
        })
        .collect()
}

const PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// chrF++'s word split: punctuation at either end of a word becomes its own token.
fn chrf_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in py_split(s) {
        let chars: Vec<char> = w.chars().collect();
        if chars.len() == 1 {
            out.push(w.to_string());
        } else if PUNCT.contains(chars[chars.len() - 1]) {
            out.push(chars[..chars.len() - 1].iter().collect());
            out.push(chars[chars.len() - 1].to_string());
        } else if PUNCT.contains(chars[0]) {
            out.push(chars[0].to_string());
            out.push(chars[1..].iter().collect());
        } else {
            out.push(w.to_string());
        }
    }
    out
}

/// Per order: `[hyp n-grams, ref n-grams, matches]`, char orders then word orders.
fn chrf_stats_one(opts: ChrfOptions, hyp: &str, reference: &str) -> Vec<[usize; 3]> {
    let strip = |s: &str| -> String { py_split(s).collect() };
    let (h, r) = (strip(hyp), strip(reference));
    let mut stats = Vec::new();
    let mut push = |hc: Vec<(usize, usize)>, rtotal: usize| {
        let hyp_count: usize = hc.iter().map(|x| x.0).sum();
        let matches: usize = hc.iter().map(|x| x.1).sum();
        // sacreBLEU counts no hypothesis n-grams when the reference has none of that order.
        stats.push([if rtotal > 0 { hyp_count } else { 0 }, rtotal, matches]);
    };
    for (hn, rn) in char_ngrams(&h, opts.char_order)
        .iter()
        .zip(char_ngrams(&r, opts.char_order).iter())
    {
        let hc = hn
            .iter()
            .map(|(g, &c)| (c, c.min(*rn.get(g).unwrap_or(&0))))
            .collect();
        push(hc, rn.values().sum());
    }
    if opts.word_order > 0 {
        let hw = chrf_words(hyp);
        let rw = chrf_words(reference);
        let hw: Vec<&str> = hw.iter().map(String::as_str).collect();
        let rw: Vec<&str> = rw.iter().map(String::as_str).collect();
        for n in 1..=opts.word_order {
            let (hn, rn) = (word_ngrams(&hw, n), word_ngrams(&rw, n));
            let hc = hn
                .iter()
                .map(|(g, &c)| (c, c.min(*rn.get(g).unwrap_or(&0))))
                .collect();
            push(hc, rn.values().sum());
        }
    }
    stats
}

fn chrf_from_stats(stats: &[[usize; 3]]) -> f64 {
    let eps = 1e-16;
    let factor = BETA * BETA;
    let (mut avg_prec, mut avg_rec, mut effective) = (0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in stats {
        let prec = if n_hyp > 0 {
            n_match as f64 / n_hyp as f64
        } else {
            eps
        };
        let rec = if n_ref > 0 {
            n_match as f64 / n_ref as f64
        } else {
            eps
        };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    avg_prec /= effective as f64;
    avg_rec /= effective as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
}

/// Per segment, the chrF statistics against its best reference (the one with the best
/// sentence-level chrF); `refs[k][i]` is the k-th reference of hypothesis `i`.
pub fn chrf_segments(hyps: &[String], refs: &[Vec<String>], opts: ChrfOptions) -> Vec<ChrfStats> {
    let lower = |s: &str| {
        if opts.lowercase {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    hyps.iter()
        .enumerate()
        .map(|(i, h)| {
            let h = lower(h);
            let mut best: Option<(f64, Vec<[usize; 3]>)> = None;
            for r in refs {
                let s = chrf_stats_one(opts, &h, &lower(&r[i]));
                let f = chrf_from_stats(&s);
                if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
                    best = Some((f, s));
                }
            }
            let n_orders = opts.char_order + opts.word_order;
            ChrfStats(best.map_or_else(|| vec![[0; 3]; n_orders], |(_, s)| s))
        })
        .collect()
}

/// chrF sufficient statistics: per order `[hyp n-grams, ref n-grams, matches]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChrfStats(pub Vec<[usize; 3]>);

impl std::ops::AddAssign<&ChrfStats> for ChrfStats {
    fn add_assign(&mut self, o: &ChrfStats) {
        if self.0.is_empty() {
            self.0 = vec![[0; 3]; o.0.len()];
        }
        for (t, x) in self.0.iter_mut().zip(&o.0) {
            for k in 0..3 {
                t[k] += x[k];
            }
        }
    }
}

impl ChrfStats {
    /// The corpus chrF (0–100) of these summed statistics.
    pub fn score(&self) -> f64 {
        chrf_from_stats(&self.0)
    }
}

/// The sacreBLEU signature of a chrF computation.
pub fn chrf_signature(opts: ChrfOptions, n_refs: usize) -> String {
    let name = if opts.word_order > 0 {
        format!("chrF{}{}", BETA as u32, "+".repeat(opts.word_order))
    } else {
        format!("chrF{}", BETA as u32)
    };
    format!(
        "{name}|nrefs:{n_refs}|case:{}|eff:yes|nc:{}|nw:{}|space:no|version:{SACREBLEU_VERSION}",
        if opts.lowercase { "lc" } else { "mixed" },
        opts.char_order,
        opts.word_order
    )
}

/// `refs[k][i]` is the k-th reference of hypothesis `i`; with several references the one
/// with the best sentence-level chrF is used for each segment.
pub fn corpus_chrf(hyps: &[String], refs: &[Vec<String>], opts: ChrfOptions) -> ChrfScore {
    let mut total = ChrfStats::default();
    for s in &chrf_segments(hyps, refs, opts) {
        total += s;
    }
    ChrfScore {
        score: total.score(),
        signature: chrf_signature(opts, refs.len()),
    }
}
