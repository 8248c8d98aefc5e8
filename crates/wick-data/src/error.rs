//! Errors of the data layer: each names the file and, where there is one, the line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The I/O error is part of the message rather than a `source`, so it prints once.
    #[error("cannot open {}: {io}", path.display())]
    Open { path: PathBuf, io: std::io::Error },
    #[error("{}:{line}: read error: {io}", path.display())]
    Read {
        path: PathBuf,
        line: usize,
        io: std::io::Error,
    },
    #[error("{}:{line}: invalid UTF-8 (byte offset {offset} in the line)", path.display())]
    Utf8 {
        path: PathBuf,
        line: usize,
        offset: usize,
    },
    #[error("{}:{line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{} has {n_src} lines but {} has {n_tgt}: source and target files must be aligned line by line", src.display(), tgt.display())]
    LengthMismatch {
        src: PathBuf,
        tgt: PathBuf,
        n_src: usize,
        n_tgt: usize,
    },
    #[error("{}: no sentence pairs", path.display())]
    Empty { path: PathBuf },
    #[error("tokenizer {}: {problem}", path.display())]
    Tokenizer { path: PathBuf, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;
