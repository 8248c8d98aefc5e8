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

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha1::Sha1;
use sha2::{Digest, Sha256};

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

fn invalid(text: &str, why: &str) -> DataError {
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

    fn hub_repo(&self) -> Repo {
        let kind = if self.dataset {
            RepoType::Dataset
        } else {
            RepoType::Model
        };
        match &self.revision {
            Some(rev) => Repo::with_revision(self.repo.clone(), kind, rev.clone()),
            None => Repo::new(self.repo.clone(), kind),
        }
    }

    fn with_file(&self, file: &str) -> Self {
        Self {
            file: file.to_string(),
            ..self.clone()
        }
    }
}

/// Whether `path` is an `hf://` path.
pub fn is_hub_path(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with(SCHEME))
}

/// The hub as the environment configures it.
#[derive(Clone, Debug)]
pub struct Hub {
    cache_dir: PathBuf,
    endpoint: String,
    offline: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl Hub {
    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self> {
        let cache_dir = match (
            std::env::var_os("HF_HUB_CACHE"),
            std::env::var_os("HF_HOME"),
        ) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => PathBuf::from(home).join("hub"),
            (None, None) => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".cache/huggingface/hub"),
                None => {
                    return Err(DataError::Invalid(
                        "no hub cache directory: set HF_HOME or HOME".into(),
                    ));
                }
            },
        };
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        Ok(Self {
            cache_dir,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            offline: env_flag("HF_HUB_OFFLINE"),
        })
    }

    /// Never touch the network, whatever `HF_HUB_OFFLINE` says.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline |= offline;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    fn api(&self) -> Result<hf_hub::api::sync::Api> {
        ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_progress(false)
            .build()
            .map_err(|e| DataError::Invalid(format!("cannot set up the hub client: {e}")))
    }

    /// The local path of one file, downloading it unless it is cached (and intact).
    pub fn file(&self, path: &HubPath) -> Result<PathBuf> {
        if path.file.is_empty() {
            return Err(invalid(&path.to_string(), "names a repository, not a file"));
        }
        let cache = Cache::new(self.cache_dir.clone());
        if let Some(local) = cache.repo(path.hub_repo()).get(&path.file) {
            verify(path, &local)?;
            return Ok(local);
        }
        if self.offline {
            return Err(DataError::Invalid(format!(
                "{path} is not in the hub cache {} and offline mode is on (HF_HUB_OFFLINE): \
                 fetch it first with `wick data fetch {path}` while online",
                self.cache_dir.display()
            )));
        }
        let local = self
            .api()?
            .repo(path.hub_repo())
            .download(&path.file)
            .map_err(|e| self.describe(path, e))?;
        verify(path, &local)?;
        Ok(local)
    }

    /// Every file of a repository (`path.file` empty) or the one file `path` names.
    pub fn fetch(&self, path: &HubPath) -> Result<Vec<(HubPath, PathBuf)>> {
        if !path.file.is_empty() {
            return Ok(vec![(path.clone(), self.file(path)?)]);
        }
        if self.offline {
            return Err(DataError::Invalid(format!(
                "listing {path} needs the network, and offline mode is on (HF_HUB_OFFLINE); \
                 name the files instead"
            )));
        }
        let info = self
            .api()?
            .repo(path.hub_repo())
            .info()
            .map_err(|e| self.describe(path, e))?;
        info.siblings
            .iter()
            .map(|s| {
                let p = path.with_file(&s.rfilename);
                self.file(&p).map(|local| (p, local))
            })
            .collect()
    }

    fn describe(&self, path: &HubPath, e: ApiError) -> DataError {
        let why = match &e {
            ApiError::RequestError(re) => match re.as_ref() {
                ureq::Error::Status(404, _) => format!(
                    "not found on {} (HTTP 404): check the repository, revision and file name{}",
                    self.endpoint,
                    if path.dataset {
                        ""
                    } else {
                        "; a dataset repository is spelt hf://datasets/OWNER/NAME/…"
                    }
                ),
                ureq::Error::Status(code @ (401 | 403), _) => format!(
                    "access denied by {} (HTTP {code}): the repository may be private or gated; \
                     put a token in the hub cache's token file (`huggingface-cli login`)",
                    self.endpoint
                ),
                ureq::Error::Status(code, _) => {
                    format!("{} answered HTTP {code}", self.endpoint)
                }
                ureq::Error::Transport(t) => format!(
                    "cannot reach {}: {t} (set HF_HUB_OFFLINE=1 to use only cached files)",
                    self.endpoint
                ),
            },
            ApiError::MissingHeader(h) => format!(
                "{} sent no `{h}` header: is HF_ENDPOINT a Hugging Face hub?",
                self.endpoint
            ),
            other => other.to_string(),
        };
        DataError::Invalid(format!("cannot download {path}: {why}"))
    }
}

/// Resolves an `hf://` path to its local copy (downloading it if needed); other paths pass
/// through unchanged.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    match path.to_str().and_then(HubPath::parse) {
        None => Ok(path.to_path_buf()),
        Some(hub_path) => Hub::from_env()?.file(&hub_path?),
    }
}

/// Checks a cached file against the hash that names its blob: the cache stores each file as
/// `blobs/<etag>` with a symlink from `snapshots/<commit>/<file>`, and the hub's etag is the
/// sha256 of the content for LFS files and the git blob sha1 for the others. A file that
/// does not match is removed from the cache so that the next attempt downloads it again.
fn verify(path: &HubPath, local: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(local).map_err(|io| DataError::Open {
        path: local.to_path_buf(),
        io,
    })?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let is_hex = |n: usize| etag.len() == n && etag.bytes().all(|b| b.is_ascii_hexdigit());
    let actual = if is_hex(64) {
        hash_file::<Sha256>(&blob, None)?
    } else if is_hex(40) {
        let len = std::fs::metadata(&blob)
            .map_err(|io| DataError::Open {
                path: blob.clone(),
                io,
            })?
            .len();
        hash_file::<Sha1>(&blob, Some(format!("blob {len}\0").into_bytes()))?
    } else {
        // An etag that is not a content hash (some mirrors): nothing to check against.
        return Ok(());
    };
    if actual == etag {
        return Ok(());
    }
    let _ = std::fs::remove_file(local);
    let _ = std::fs::remove_file(&blob);
    Err(DataError::Invalid(format!(
        "corrupted download of {path}: its content hashes to {actual}, the hub names it {etag}; \
         the file was removed from the cache, so the next run downloads it again"
    )))
}

fn hash_file<H: Digest>(path: &Path, prefix: Option<Vec<u8>>) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|io| DataError::Open {
        path: path.to_path_buf(),
        io,
    })?;
    let mut hasher = H::new();
    if let Some(p) = prefix {
        hasher.update(&p);
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|io| DataError::Read {
            path: path.to_path_buf(),
            line: 0,
            io,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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
