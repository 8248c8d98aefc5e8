//! Files from the Hugging Face Hub: `hf://` paths, resolved through the standard hub cache.
//!
//! A path `hf://datasets/<owner>/<name>[@<revision>]/<file>` names a file of a dataset
//! repository, `hf://<owner>/<name>[@<revision>]/<file>` one of a model repository (the
//! same spelling as `huggingface_hub`'s `HfFileSystem`). Downloads go through the `hf-hub`
//! crate into the cache every Hugging Face tool shares (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`); `HF_ENDPOINT` points at another server
//! (a mirror, or a local one in tests) and `HF_HUB_OFFLINE=1` forbids the network: cached
//! files are used, missing ones are an error that says how to fetch them.
//!
//! `hf-hub` neither checks what it downloaded nor reports HTTP errors by status, so this module
//! does both: every file is checked against the hash the hub named it by (sha256 for LFS
//! files, the git blob sha1 otherwise) after download and on every cache hit, and a mismatch
//! removes the file from the cache.
//!
//! Downloading needs the `hub` feature (the `wick` binary has it); without it `hf://` paths
//! are still recognised, and refused with an error that says so.

#[cfg(feature = "hub")]
mod client;

use std::fmt;
use std::path::{Path, PathBuf};

#[cfg(feature = "hub")]
pub use self::client::Hub;
use crate::error::{DataError, Result};

const SCHEME: &str = "hf://";

/// A file (or, with `file` empty, a whole repository) on the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubPath {
    pub dataset: bool,
    /// `owner/name`.
    pub repo: String,
    pub revision: Option<String>,
    /// Path inside the repository; empty for the repository itself.
    pub file: String,
}

impl fmt::Display for HubPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}")?;
        if self.dataset {
            write!(f, "datasets/")?;
        }
        write!(f, "{}", self.repo)?;
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        if !self.file.is_empty() {
            write!(f, "/{}", self.file)?;
        }
        Ok(())
    }
}

pub(crate) fn invalid(text: &str, why: &str) -> DataError {
    DataError::Invalid(format!(
        "{text}: {why} (expected hf://datasets/OWNER/NAME[@REVISION]/FILE or hf://OWNER/NAME[@REVISION]/FILE)"
    ))
}

impl HubPath {
    /// `None` when `text` is not an `hf://` path; an error when it is one but malformed.
    pub fn parse(text: &str) -> Option<Result<Self>> {
        let rest = text.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(text, rest))
    }

    fn parse_rest(text: &str, rest: &str) -> Result<Self> {
        let (dataset, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        let file = parts.next().unwrap_or_default().trim_end_matches('/');
        let (name, revision) = match name.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (name, None),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(owner) || !ok(name) {
            return Err(invalid(text, "the repository must be OWNER/NAME"));
        }
        if revision.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(text, "empty revision after @"));
        }
        if file.split('/').any(|c| c == ".." || c == ".") || file.contains("//") {
            return Err(invalid(
                text,
                "the file path may not contain '.', '..' or '//'",
            ));
        }
        Ok(Self {
            dataset,
            repo: format!("{owner}/{name}"),
            revision,
            file: file.to_string(),
        })
    }
}

/// Whether `path` is an `hf://` path.
pub fn is_hub_path(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with(SCHEME))
}

/// Resolves an `hf://` path to its local copy (downloading it if needed); other paths pass
/// through unchanged.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    match path.to_str().and_then(HubPath::parse) {
        None => Ok(path.to_path_buf()),
        #[cfg(feature = "hub")]
        Some(hub_path) => Hub::from_env()?.file(&hub_path?),
        #[cfg(not(feature = "hub"))]
        Some(hub_path) => Err(DataError::Invalid(format!(
            "{}: this build has no Hugging Face Hub support (enable the `hub` feature of wick-data or wick-train; the `wick` binary has it)",
            hub_path?
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_paths() {
        let p = HubPath::parse("hf://datasets/bentrevett/multi30k/train.jsonl")
            .unwrap()
            .unwrap();
        assert!(p.dataset);
        assert_eq!(p.repo, "bentrevett/multi30k");
        assert_eq!(p.file, "train.jsonl");
        assert_eq!(
            p.to_string(),
            "hf://datasets/bentrevett/multi30k/train.jsonl"
        );
        let p = HubPath::parse("hf://me/tok@v2/sub/tokenizer.json")
            .unwrap()
            .unwrap();
        assert!(!p.dataset);
        assert_eq!(p.revision.as_deref(), Some("v2"));
        assert_eq!(p.file, "sub/tokenizer.json");
        let repo = HubPath::parse("hf://datasets/a/b").unwrap().unwrap();
        assert!(repo.file.is_empty());
        assert!(HubPath::parse("data/train.tsv").is_none());
        for bad in [
            "hf://",
            "hf://onlyowner",
            "hf://a/b@/f",
            "hf://a/b/../x",
            "hf://a b/c/f",
        ] {
            assert!(HubPath::parse(bad).unwrap().is_err(), "{bad}");
        }
    }
}
