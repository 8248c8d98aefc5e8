//! Corpus BLEU (Papineni et al., 2002) and chrF (Popović, 2015) computed exactly as
//! sacreBLEU 2.x computes them (Post, 2018), with its signatures, so wick's numbers can be
//! compared with papers and with `sacrebleu` output. Re-implemented rather than wrapped
//! because no Rust crate reproduces sacreBLEU; `tests/sacrebleu.rs` checks it against
//! fixtures produced by sacreBLEU itself (`scripts/reference/sacrebleu_fixtures.py`).
//!
//! No Candle and no model: the crate scores text files, and is usable on its own.
//!
//! ```
//! use wick_metrics::{BleuOptions, ChrfOptions, corpus_bleu, corpus_chrf};
//!
//! let hyps = vec!["the cat sat on the mat".to_string(), "a dog barked".to_string()];
//! let refs = vec![vec!["the cat sat on the mat".to_string(), "the dog barked".to_string()]];
//! // sacreBLEU 2.6.0 on the same text: BLEU = 88.36, chrF2 = 88.75.
//! let bleu = corpus_bleu(&hyps, &refs, BleuOptions::default());
//! assert_eq!(format!("{:.2}", bleu.score), "88.36");
//! assert!(bleu.signature.starts_with("BLEU|nrefs:1|case:mixed|eff:no|tok:13a"));
//! let chrf = corpus_chrf(&hyps, &refs, ChrfOptions::default());
//! assert_eq!(format!("{:.2}", chrf.score), "88.75");
//! ```

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// The sacreBLEU version whose behaviour (and signature) these metrics reproduce.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// BLEU tokenizers of sacreBLEU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BleuTokenizer {
    /// mteval-v13a, sacreBLEU's default.
    #[serde(rename = "13a")]
    Thirteen,
    /// mteval-v14 international: splits on Unicode punctuation and symbols.
    Intl,
    /// Every character is a token.
    Char,
    /// Text is already tokenized.
    None,
}

impl BleuTokenizer {
    pub fn name(self) -> &'static str {
        match self {
            BleuTokenizer::Thirteen => "13a",
            BleuTokenizer::Intl => "intl",
            BleuTokenizer::Char => "char",
            BleuTokenizer::None => "none",
        }
    }
}

impl std::str::FromStr for BleuTokenizer {
    type Err = String;

    /// The names sacreBLEU's `--tokenize` takes: `13a`, `intl`, `char`, `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Thirteen, Self::Intl, Self::Char, Self::None]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown BLEU tokenizer `{s}` (expected 13a, intl, char or none)")
            })
    }
}

/// Python's `' '.join(s.split())`: Python also splits on U+001C–U+001F, Rust does not.
fn normalize_spaces(s: &str) -> String {
    py_split(s).collect::<Vec<_>>().join(" ")
}

#[allow(clippy::expect_used)] // the patterns are constants; a bad one is a bug found by every test
fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid built-in regex")
}

static RE_13A: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    [
        (re(r"([{-~\[-`\x20-&(-+:-@/])"), " $1 "),
        (re(r"([^0-9])([.,])"), "$1 $2 "),
        (re(r"([.,])([^0-9])"), " $1 $2"),
        (re(r"([0-9])(-)"), "$1 $2 "),
    ]
});

static RE_INTL: LazyLock<[(Regex, &'static str); 3]> = LazyLock::new(|| {
    [
        (re(r"(\P{N})(\p{P})"), "$1 $2 "),
        (re(r"(\p{P})(\P{N})"), " $1 $2"),
        (re(r"(\p{S})"), " $1 "),
    ]
});

fn apply(rules: &[(Regex, &str)], line: &str) -> String {
    let mut s = line.to_string();
    for (regex, replacement) in rules {
        s = regex.replace_all(&s, *replacement).into_owned();
    }
    normalize_spaces(&s)
}

/// Tokenizes one segment as sacreBLEU's tokenizer of that name does.
pub fn tokenize(tok: BleuTokenizer, line: &str) -> String {
    match tok {
        BleuTokenizer::None => line.to_string(),
        BleuTokenizer::Char => line.chars().map(String::from).collect::<Vec<_>>().join(" "),
        BleuTokenizer::Intl => apply(&*RE_INTL, line),
        BleuTokenizer::Thirteen => {
            let mut s = line
                .replace("<skipped>", "")
                .replace("-\n", "")
                .replace('\n', " ");
            if s.contains('&') {
                s = s
                    .replace("&quot;", "\"")
                    .replace("&amp;", "&")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">");
            }
            apply(&*RE_13A, &format!(" {s} "))
        }
    }
}

/// Python's `str.split()`.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
}

fn word_ngrams<'a>(tokens: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut out = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *out.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    out
}

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

/// A percentile bootstrap confidence interval of a corpus score.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ConfidenceInterval {
    /// Mean of the resampled scores.
    pub mean: f64,
    /// 2.5th and 97.5th percentiles of the resampled scores (a 95% interval).
    pub low: f64,
    pub high: f64,
    pub resamples: usize,
    pub seed: u64,
}

impl ConfidenceInterval {
    /// Half the interval's width, the `± x` of sacreBLEU's `--confidence` output.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }
}

/// Bootstrap resampling (Koehn, 2004): draws `resamples` corpora of `n` segments with
/// replacement (ChaCha8 seeded with `seed`, so reruns agree) and scores each with `score`,
/// which gets the drawn segment indices.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    seed: u64,
    mut score: impl FnMut(&[usize]) -> f64,
) -> ConfidenceInterval {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut scores: Vec<f64> = (0..resamples)
        .map(|_| {
            for i in &mut idx {
                *i = rng.random_range(0..n.max(1));
            }
            score(&idx)
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let at = |q: f64| scores[((q * resamples as f64) as usize).min(resamples.saturating_sub(1))];
    ConfidenceInterval {
        mean: scores.iter().sum::<f64>() / resamples.max(1) as f64,
        low: if resamples > 0 { at(0.025) } else { f64::NAN },
        high: if resamples > 0 { at(0.975) } else { f64::NAN },
        resamples,
        seed,
    }
}

/// 95% bootstrap intervals of corpus BLEU and chrF from per-segment statistics.
pub fn bleu_chrf_intervals(
    bleu: &[BleuStats],
    chrf: &[ChrfStats],
    opts: BleuOptions,
    resamples: usize,
    seed: u64,
) -> (ConfidenceInterval, ConfidenceInterval) {
    let b = bootstrap(bleu.len(), resamples, seed, |idx| {
        let mut total = BleuStats::default();
        for &i in idx {
            total += bleu[i];
        }
        bleu_from_stats(&total, opts, 1).score
    });
    let c = bootstrap(chrf.len(), resamples, seed, |idx| {
        let mut total = ChrfStats::default();
        for &i in idx {
            total += &chrf[i];
        }
        total.score()
    });
    (b, c)
}
