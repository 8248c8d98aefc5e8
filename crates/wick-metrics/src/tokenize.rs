//! sacreBLEU's tokenizers (13a, intl, char, none) and Python's whitespace split.

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
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
}

/// Counts of the word n-grams of `tokens`.
pub(crate) fn word_ngrams<'a>(tokens: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut out = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *out.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    out
}
