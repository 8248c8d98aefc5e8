//! Downloads through the `hf-hub` crate, each file checked against the hub's hash.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{HubPath, invalid};
use crate::error::{DataError, Result};

impl HubPath {
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
