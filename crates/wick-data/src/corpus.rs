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

/// Where a split's sentence pairs come from. In TOML either a path to a TSV file
/// (`train = "data/toy/train.tsv"`) or a table of two aligned files
/// (`train = { src = "train.en", tgt = "train.fr" }`). Files ending in `.gz` are
/// decompressed on the fly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CorpusSpec {
    Tsv(PathBuf),
    Files { src: PathBuf, tgt: PathBuf },
}

impl CorpusSpec {
    /// The files this split reads (for hashing into the run manifest).
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            CorpusSpec::Tsv(p) => vec![p.as_path()],
            CorpusSpec::Files { src, tgt } => vec![src.as_path(), tgt.as_path()],
        }
    }

    /// A short human-readable description.
    pub fn describe(&self) -> String {
        self.paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    pub fn read(&self) -> Result<Vec<Pair>> {
        let pairs = match self {
            CorpusSpec::Tsv(path) => read_tsv(path)?,
            CorpusSpec::Files { src, tgt } => read_aligned(src, tgt)?,
        };
        if pairs.is_empty() {
            return Err(DataError::Empty {
                path: self.paths()[0].to_path_buf(),
            });
        }
        Ok(pairs)
    }
}

/// Opens a file, decompressing `.gz`.
fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|source| DataError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Reads every line of a text file as UTF-8, without the line terminator (`\n` or `\r\n`)
/// and without a leading byte-order mark.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut reader = open(path)?;
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line_no = lines.len() + 1;
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| DataError::Read {
                path: path.to_path_buf(),
                line: line_no,
                source,
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
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::Utf8 {
            path: path.to_path_buf(),
            line: line_no,
            offset: e.valid_up_to(),
        })?;
        lines.push(text.to_string());
    }
    Ok(lines)
}

fn check_side(path: &Path, line: usize, side: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(DataError::Line {
            path: path.to_path_buf(),
            line,
            problem: format!("empty {side} side"),
        });
    }
    if text.contains('\0') {
        return Err(DataError::Line {
            path: path.to_path_buf(),
            line,
            problem: format!("NUL byte in the {side} side"),
        });
    }
    Ok(())
}

/// Reads `source<TAB>target` lines.
pub fn read_tsv(path: &Path) -> Result<Vec<Pair>> {
    let lines = read_lines(path)?;
    let mut pairs = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        let mut cols = line.split('\t');
        let (Some(src), Some(tgt), None) = (cols.next(), cols.next(), cols.next()) else {
            let n = line.split('\t').count();
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line: line_no,
                problem: format!("expected 2 tab-separated columns (source, target), found {n}"),
            });
        };
        check_side(path, line_no, "source", src)?;
        check_side(path, line_no, "target", tgt)?;
        pairs.push(Pair {
            src: src.to_string(),
            tgt: tgt.to_string(),
        });
    }
    Ok(pairs)
}

/// Reads two files aligned line by line.
pub fn read_aligned(src_path: &Path, tgt_path: &Path) -> Result<Vec<Pair>> {
    let src = read_lines(src_path)?;
    let tgt = read_lines(tgt_path)?;
    if src.len() != tgt.len() {
        return Err(DataError::LengthMismatch {
            src: src_path.to_path_buf(),
            tgt: tgt_path.to_path_buf(),
            n_src: src.len(),
            n_tgt: tgt.len(),
        });
    }
    let mut pairs = Vec::with_capacity(src.len());
    for (i, (s, t)) in src.into_iter().zip(tgt).enumerate() {
        check_side(src_path, i + 1, "source", &s)?;
        check_side(tgt_path, i + 1, "target", &t)?;
        pairs.push(Pair { src: s, tgt: t });
    }
    Ok(pairs)
}
