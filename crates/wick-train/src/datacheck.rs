//! `wick data check`: everything wrong or suspicious in a corpus, found without training.

use std::collections::HashSet;

use serde::Serialize;
use wick_data::corpus::Problem;
use wick_data::{BadLine, CorpusSpec, OnBadLine};

use crate::prepare::certainly_too_long;

/// Line numbers shown per finding; the counts are always complete.
const SHOWN: usize = 5;

/// A finding: how many lines, and the first few line numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Finding {
    pub count: usize,
    pub lines: Vec<usize>,
}

impl Finding {
    fn add(&mut self, line: usize) {
        self.count += 1;
        if self.lines.len() < SHOWN {
            self.lines.push(line);
        }
    }

    fn describe(&self) -> String {
        wick_data::corpus::count_with_lines(self.count, &self.lines)
    }
}

/// What `data check` found in one split.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitReport {
    pub split: String,
    pub files: String,
    pub lines: usize,
    /// Usable pairs (lines without a problem).
    pub pairs: usize,
    /// Malformed lines by problem (every one of them is listed in `bad_lines`).
    pub invalid_utf8: Finding,
    /// TSV lines without two columns, JSON Lines without both fields.
    pub wrong_columns: Finding,
    pub empty_side: Finding,
    pub control_characters: Finding,
    pub bad_lines: Vec<BadLine>,
    /// Pairs with a side of more than `max_len` words or `max_len × 64` bytes: certainly
    /// over `data.max_len` subword tokens, so training drops them.
    pub too_long: Finding,
    /// Pairs identical to an earlier pair of the split.
    pub duplicate_pairs: Finding,
    /// Pairs whose target equals their source (untranslated copies).
    pub source_equals_target: Finding,
    /// Unreadable data: missing file, read error, files of different lengths, no pairs.
    pub error: Option<String>,
}

/// Source sentences of a held-out split that are also training sources.
#[derive(Clone, Debug, Serialize)]
pub struct Overlap {
    pub split: String,
    pub finding: Finding,
    /// Fraction of the split's pairs affected.
    pub fraction: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub splits: Vec<SplitReport>,
    pub overlaps: Vec<Overlap>,
    pub max_len: usize,
    pub on_bad_line: OnBadLine,
    /// Problems that would stop `wick train`: the reason the exit status is non-zero.
    pub fatal: Vec<String>,
}

/// Checks `splits` (name, corpus): train first, then held-out splits, whose sources are
/// compared with train's.
pub fn check(splits: &[(String, CorpusSpec)], max_len: usize, policy: OnBadLine) -> CheckReport {
    let mut reports = Vec::new();
    let mut fatal = Vec::new();
    let mut sources_by_split: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    for (name, spec) in splits {
        let mut r = SplitReport {
            split: name.clone(),
            files: spec.describe(),
            ..Default::default()
        };
        match spec.scan() {
            Err(e) => {
                r.error = Some(e.to_string());
                fatal.push(format!("data.{name}: {e}"));
            }
            Ok(scan) => {
                r.lines = scan.lines;
                r.pairs = scan.pairs.len();
                for b in &scan.bad {
                    let f = match b.problem {
                        Problem::InvalidUtf8 => &mut r.invalid_utf8,
                        Problem::Columns | Problem::Json => &mut r.wrong_columns,
                        Problem::EmptySide => &mut r.empty_side,
                        Problem::ControlCharacter => &mut r.control_characters,
                    };
                    f.add(b.line);
                }
                if policy == OnBadLine::Error
                    && let Some(b) = scan.bad.first()
                {
                    fatal.push(format!(
                        "data.{name}: {} bad lines and data.on_bad_line = \"error\"; the first: {b}",
                        scan.bad.len()
                    ));
                }
                if scan.pairs.is_empty() {
                    fatal.push(format!("data.{name}: no usable sentence pairs"));
                }
                let mut seen: HashSet<(&str, &str)> = HashSet::new();
                for (p, &line) in scan.pairs.iter().zip(&scan.line_numbers) {
                    if certainly_too_long(&p.src, max_len) || certainly_too_long(&p.tgt, max_len) {
                        r.too_long.add(line);
                    }
                    if !seen.insert((p.src.as_str(), p.tgt.as_str())) {
                        r.duplicate_pairs.add(line);
                    }
                    if p.src.trim() == p.tgt.trim() {
                        r.source_equals_target.add(line);
                    }
                }
                r.bad_lines = scan.bad;
                sources_by_split.push((
                    name.clone(),
                    scan.line_numbers
                        .iter()
                        .copied()
                        .zip(scan.pairs.into_iter().map(|p| p.src))
                        .collect(),
                ));
            }
        }
        reports.push(r);
    }
    let mut overlaps = Vec::new();
    if let Some(train_pos) = sources_by_split.iter().position(|(n, _)| n == "train") {
        let train: HashSet<&str> = sources_by_split[train_pos]
            .1
            .iter()
            .map(|(_, s)| s.trim())
            .collect();
        for (name, sources) in &sources_by_split {
            if name == "train" {
                continue;
            }
            let mut f = Finding::default();
            for (line, s) in sources {
                if train.contains(s.trim()) {
                    f.add(*line);
                }
            }
            overlaps.push(Overlap {
                split: name.clone(),
                fraction: f.count as f64 / sources.len().max(1) as f64,
                finding: f,
            });
        }
    }
    CheckReport {
        splits: reports,
        overlaps,
        max_len,
        on_bad_line: policy,
        fatal,
    }
}

impl CheckReport {
    /// The report as text, one finding per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        for r in &self.splits {
            line(format!("{} ({}):", r.split, r.files));
            if let Some(e) = &r.error {
                line(format!("  ERROR: {e}"));
                continue;
            }
            line(format!("  {} lines, {} usable pairs", r.lines, r.pairs));
            for (what, f) in [
                ("invalid UTF-8", &r.invalid_utf8),
                (
                    "not 2 columns / not JSON with both fields",
                    &r.wrong_columns,
                ),
                ("empty or whitespace-only side", &r.empty_side),
                ("control characters", &r.control_characters),
                (
                    &format!("longer than data.max_len = {} (dropped)", self.max_len) as &str,
                    &r.too_long,
                ),
                ("duplicate pairs", &r.duplicate_pairs),
                ("source identical to target", &r.source_equals_target),
            ] {
                if f.count > 0 {
                    line(format!("  {what}: {}", f.describe()));
                }
            }
            for b in r.bad_lines.iter().take(SHOWN) {
                line(format!("    {b}"));
            }
        }
        for o in &self.overlaps {
            if o.finding.count > 0 {
                line(format!(
                    "{} sources also in train: {} = {:.1}% of {} — scores on it are optimistic",
                    o.split,
                    o.finding.describe(),
                    100.0 * o.fraction,
                    o.split
                ));
            } else {
                line(format!("{}: no source sentence also in train", o.split));
            }
        }
        if self.fatal.is_empty() {
            line("no fatal problems".to_string());
        } else {
            for f in &self.fatal {
                line(format!("FATAL: {f}"));
            }
        }
        out
    }
}

/// How many of `held_out`'s sources (trimmed) are also sources of `train`: the held-out
/// split's leakage, which `manifest.json` records.
pub fn sources_in_train(train: &[wick_data::Pair], held_out: &[wick_data::Pair]) -> usize {
    let train: HashSet<&str> = train.iter().map(|p| p.src.trim()).collect();
    held_out
        .iter()
        .filter(|p| train.contains(p.src.trim()))
        .count()
}
