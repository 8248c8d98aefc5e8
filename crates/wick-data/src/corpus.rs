//! Parallel corpus readers.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// One sentence pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub src: String,
    pub tgt: String,
}

/// Where a split's sentence pairs come from. In TOML a path to a TSV file
/// (`train = "data/toy/train.tsv"`), a JSON Lines file with the field of each side
/// (`train = { jsonl = "train.jsonl", src = "en", tgt = "de" }`, one
/// `{"en": "…", "de": "…"}` object per line), or two aligned files
/// (`train = { src = "train.en", tgt = "train.fr" }`). Files ending in `.gz` are
/// decompressed on the fly. Any path may be an `hf://` path on the Hugging Face Hub
/// ([`crate::hub`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CorpusSpec {
    Tsv(PathBuf),
    // Before `Files`: a table with `jsonl` is JSON Lines even though it has `src`/`tgt` too.
    Jsonl {
        jsonl: PathBuf,
        /// Field holding the source sentence.
        src: String,
        /// Field holding the target sentence.
        tgt: String,
    },
    Files {
        src: PathBuf,
        tgt: PathBuf,
    },
}

impl CorpusSpec {
    /// The files this split reads (for hashing into the run manifest).
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            CorpusSpec::Tsv(p) | CorpusSpec::Jsonl { jsonl: p, .. } => vec![p.as_path()],
            CorpusSpec::Files { src, tgt } => vec![src.as_path(), tgt.as_path()],
        }
    }

    /// The same corpus with every `hf://` path replaced by its local copy in the hub cache
    /// (downloaded if needed; see [`crate::hub`]).
    pub fn resolve(&self) -> Result<CorpusSpec> {
        use crate::hub::resolve;
        Ok(match self {
            CorpusSpec::Tsv(p) => CorpusSpec::Tsv(resolve(p)?),
            CorpusSpec::Jsonl { jsonl, src, tgt } => CorpusSpec::Jsonl {
                jsonl: resolve(jsonl)?,
                src: src.clone(),
                tgt: tgt.clone(),
            },
            CorpusSpec::Files { src, tgt } => CorpusSpec::Files {
                src: resolve(src)?,
                tgt: resolve(tgt)?,
            },
        })
    }

    /// A short human-readable description.
    pub fn describe(&self) -> String {
        self.paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Opens a file, decompressing `.gz`.
fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|io| DataError::Open {
        path: path.to_path_buf(),
        io,
    })?;
    Ok(decompressing(path, Box::new(file)))
}

/// A buffered reader of `input`, gunzipped when `path` ends in `.gz`.
pub fn decompressing(path: &Path, input: Box<dyn Read>) -> Box<dyn BufRead> {
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else {
        input
    };
    Box::new(BufReader::with_capacity(1 << 16, reader))
}

/// A line as read: its text, or where its invalid UTF-8 starts.
pub type RawLine = std::result::Result<String, usize>;

/// Reads every line of a text file without the line terminator (`\n` or `\r\n`) and without
/// a leading byte-order mark, keeping lines that are not valid UTF-8 as the byte offset of
/// the first bad byte. Read errors (a truncated `.gz`, an I/O failure) name the file and line.
pub fn read_raw_lines(path: &Path) -> Result<Vec<RawLine>> {
    read_raw_lines_from(&mut open(path)?, path)
}

/// [`read_raw_lines`] over any reader; `path` names it in errors.
pub fn read_raw_lines_from(reader: &mut dyn BufRead, path: &Path) -> Result<Vec<RawLine>> {
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line_no = lines.len() + 1;
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|io| DataError::Read {
                path: path.to_path_buf(),
                line: line_no,
                io,
            })?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let mut bytes = buf.as_slice();
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        lines.push(
            std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|e| e.valid_up_to()),
        );
    }
    Ok(lines)
}

/// Reads every line of a text file as UTF-8 (see [`read_raw_lines`]); the first invalid line
/// is an error naming the file, line and byte offset.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    read_raw_lines(path)?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            l.map_err(|offset| DataError::Utf8 {
                path: path.to_path_buf(),
                line: i + 1,
                offset,
            })
        })
        .collect()
}

/// What to do with a malformed line of a corpus (`data.on_bad_line`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadLine {
    /// Stop with an error naming the file, line and problem.
    #[default]
    Error,
    /// Drop the pair, count it and report the counts.
    Skip,
}

/// Why a line is not a usable sentence pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    InvalidUtf8,
    /// A TSV line without exactly two tab-separated columns.
    Columns,
    /// A JSON Lines line that is not an object with both fields as strings.
    Json,
    /// A side that is empty or only whitespace.
    EmptySide,
    /// A NUL byte or another control character (tab excepted).
    ControlCharacter,
}

impl Problem {
    pub fn describe(self) -> &'static str {
        match self {
            Problem::InvalidUtf8 => "invalid UTF-8",
            Problem::Columns => "not 2 tab-separated columns",
            Problem::Json => "not a JSON object with both fields",
            Problem::EmptySide => "empty or whitespace-only side",
            Problem::ControlCharacter => "control character",
        }
    }
}

/// A line that is not a usable sentence pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: usize,
    pub problem: Problem,
    /// The specific finding, e.g. "NUL byte (U+0000) in the target side".
    pub detail: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.detail)
    }
}

/// A corpus read in full: its good pairs (with their line numbers) and its bad lines.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub pairs: Vec<Pair>,
    /// 1-based line number of each pair.
    pub line_numbers: Vec<usize>,
    pub bad: Vec<BadLine>,
    /// Lines read (pairs + bad lines).
    pub lines: usize,
}

/// The problem of one side of a pair, if any.
fn side_problem(side: &str, text: &str) -> Option<(Problem, String)> {
    if text.trim().is_empty() {
        return Some((Problem::EmptySide, format!("empty {side} side")));
    }
    let c = text.chars().find(|&c| c.is_control() && c != '\t')?;
    let name = if c == '\0' {
        "NUL byte"
    } else {
        "control character"
    };
    Some((
        Problem::ControlCharacter,
        format!("{name} (U+{:04X}) in the {side} side", c as u32),
    ))
}

impl Scan {
    fn bad(&mut self, path: &Path, line: usize, (problem, detail): (Problem, String)) {
        self.bad.push(BadLine {
            path: path.to_path_buf(),
            line,
            problem,
            detail,
        });
    }

    /// Records a pair, or the first problem of its sides.
    fn push(&mut self, (src_path, tgt_path): (&Path, &Path), line: usize, src: &str, tgt: &str) {
        if let Some(p) = side_problem("source", src) {
            self.bad(src_path, line, p);
        } else if let Some(p) = side_problem("target", tgt) {
            self.bad(tgt_path, line, p);
        } else {
            self.pairs.push(Pair {
                src: src.to_string(),
                tgt: tgt.to_string(),
            });
            self.line_numbers.push(line);
        }
    }

    fn invalid_utf8(&mut self, path: &Path, line: usize, offset: usize) {
        let detail = format!("invalid UTF-8 (byte offset {offset} in the line)");
        self.bad(path, line, (Problem::InvalidUtf8, detail));
    }

    /// Counts of the bad lines by problem, e.g. "2 empty or whitespace-only side (lines 4,
    /// 9), 1 invalid UTF-8 (line 7)".
    pub fn summary(&self) -> String {
        let mut by: std::collections::BTreeMap<Problem, Vec<usize>> = Default::default();
        for b in &self.bad {
            by.entry(b.problem).or_default().push(b.line);
        }
        by.iter()
            .map(|(p, lines)| {
                let counted = count_with_lines(lines.len(), &lines[..lines.len().min(5)]);
                // "2 (lines 4, 9)" → "2 empty … side (lines 4, 9)"
                match counted.split_once(' ') {
                    Some((n, rest)) => format!("{n} {} {rest}", p.describe()),
                    None => counted,
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Sorts the lines of a one-file corpus into pairs and bad lines, `parse` turning a valid
/// UTF-8 line into its two sides or the problem with it.
fn scan_lines(
    path: &Path,
    lines: Vec<RawLine>,
    mut parse: impl FnMut(&str) -> std::result::Result<(String, String), (Problem, String)>,
) -> Scan {
    let mut scan = Scan::default();
    for (i, line) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        scan.lines += 1;
        match line.map(|l| parse(&l)) {
            Ok(Ok((src, tgt))) => scan.push((path, path), line_no, &src, &tgt),
            Ok(Err(problem)) => scan.bad(path, line_no, problem),
            Err(offset) => scan.invalid_utf8(path, line_no, offset),
        }
    }
    scan
}

/// Sorts the lines of a `source<TAB>target` file (read from `path`) into pairs and bad lines.
pub fn scan_tsv(path: &Path, lines: Vec<RawLine>) -> Scan {
    scan_lines(path, lines, |line| {
        let mut cols = line.split('\t');
        match (cols.next(), cols.next(), cols.next()) {
            (Some(src), Some(tgt), None) => Ok((src.to_string(), tgt.to_string())),
            _ => {
                let n = line.split('\t').count();
                Err((
                    Problem::Columns,
                    format!("expected 2 tab-separated columns (source, target), found {n}"),
                ))
            }
        }
    })
}

/// Sorts the lines of a JSON Lines file into pairs (fields `src_key` and `tgt_key`) and bad
/// lines.
pub fn scan_jsonl(path: &Path, lines: Vec<RawLine>, src_key: &str, tgt_key: &str) -> Scan {
    scan_lines(path, lines, |line| {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| (Problem::Json, format!("not valid JSON ({e})")))?;
        let field = |key: &str| value.get(key).and_then(|x| x.as_str()).map(str::to_string);
        match (field(src_key), field(tgt_key)) {
            (Some(s), Some(t)) => Ok((s, t)),
            _ => Err((
                Problem::Json,
                format!(
                    "expected a JSON object with string fields \"{src_key}\" and \"{tgt_key}\""
                ),
            )),
        }
    })
}

/// "3 (lines 4, 9, 12)" or "7 (lines 1, 2, 3, 4, 5, …)": a count and the first line numbers.
pub fn count_with_lines(count: usize, first_lines: &[usize]) -> String {
    let shown: Vec<String> = first_lines.iter().map(usize::to_string).collect();
    let more = if count > first_lines.len() {
        ", …"
    } else {
        ""
    };
    let word = if count == 1 { "line" } else { "lines" };
    format!("{count} ({word} {}{more})", shown.join(", "))
}

impl CorpusSpec {
    /// Reads the whole corpus, sorting lines into pairs and bad lines. Only problems that
    /// make the corpus unreadable are errors: a missing file, a read failure (e.g. truncated
    /// gzip), two files of different lengths.
    pub fn scan(&self) -> Result<Scan> {
        if self.paths().iter().any(|p| crate::hub::is_hub_path(p)) {
            return self.resolve()?.scan();
        }
        let (src, tgt) = match self {
            CorpusSpec::Tsv(path) => return Ok(scan_tsv(path, read_raw_lines(path)?)),
            CorpusSpec::Jsonl { jsonl, src, tgt } => {
                return Ok(scan_jsonl(jsonl, read_raw_lines(jsonl)?, src, tgt));
            }
            CorpusSpec::Files { src, tgt } => (src, tgt),
        };
        let (s, t) = (read_raw_lines(src)?, read_raw_lines(tgt)?);
        if s.len() != t.len() {
            return Err(DataError::LengthMismatch {
                src: src.clone(),
                tgt: tgt.clone(),
                n_src: s.len(),
                n_tgt: t.len(),
            });
        }
        let mut scan = Scan::default();
        for (i, (a, b)) in s.into_iter().zip(t).enumerate() {
            let line_no = i + 1;
            scan.lines += 1;
            match (a, b) {
                (Ok(a), Ok(b)) => scan.push((src, tgt), line_no, &a, &b),
                (Err(offset), _) => scan.invalid_utf8(src, line_no, offset),
                (_, Err(offset)) => scan.invalid_utf8(tgt, line_no, offset),
            }
        }
        Ok(scan)
    }

    /// The corpus's pairs under `policy`: with `Error` the first bad line is an error naming
    /// its file and line; with `Skip` bad lines are dropped and returned in the scan.
    pub fn read_with(&self, policy: OnBadLine) -> Result<Scan> {
        let scan = self.scan()?;
        if let (OnBadLine::Error, Some(b)) = (policy, scan.bad.first()) {
            return Err(DataError::Line {
                path: b.path.clone(),
                line: b.line,
                problem: format!(
                    "{} (set data.on_bad_line = \"skip\" to drop such lines; `wick data check` lists them all)",
                    b.detail
                ),
            });
        }
        if scan.pairs.is_empty() {
            return Err(DataError::Empty {
                path: self.paths()[0].to_path_buf(),
            });
        }
        Ok(scan)
    }

    /// The corpus's pairs; any bad line is an error.
    pub fn read(&self) -> Result<Vec<Pair>> {
        Ok(self.read_with(OnBadLine::Error)?.pairs)
    }
}
