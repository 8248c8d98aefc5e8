//! `hf://` paths and `wick data fetch` against a local HTTP server that plays the Hugging
//! Face Hub (no network): download into the hub cache, cache hits without a request,
//! offline mode, a 404, an unreachable server, a corrupted download, and training with data
//! and a tokenizer named by hf:// paths.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
struct Served {
    body: Vec<u8>,
    etag: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An LFS file: the hub's etag is the sha256 of the content.
fn lfs(body: &[u8]) -> Served {
    Served {
        body: body.to_vec(),
        etag: hex(&sha2::Sha256::digest(body)),
    }
}

/// A file stored in git: the etag is its git blob sha1.
fn git(body: &[u8]) -> Served {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()).as_bytes());
    h.update(body);
    Served {
        body: body.to_vec(),
        etag: hex(&h.finalize()),
    }
}

/// Files by URL path (`/datasets/OWNER/NAME/resolve/main/FILE`), repository listings by API
/// path, and a request counter.
#[derive(Clone, Default)]
struct FakeHub {
    files: Arc<Mutex<HashMap<String, Served>>>,
    listings: Arc<Mutex<HashMap<String, Vec<String>>>>,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    fn add(&self, repo_path: &str, file: &str, served: Served) {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/{repo_path}/resolve/main/{file}"), served);
        let api = match repo_path.strip_prefix("datasets/") {
            Some(r) => format!("/api/datasets/{r}/revision/main"),
            None => format!("/api/models/{repo_path}/revision/main"),
        };
        self.listings
            .lock()
            .unwrap()
            .entry(api)
            .or_default()
            .push(file.into());
    }

    fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hub = hub.clone();
                std::thread::spawn(move || hub.serve(stream));
            }
        });
        format!("http://{addr}")
    }

    fn serve(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range_start = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(r) = lower.strip_prefix("range: bytes=") {
                let (start, end) = r.trim().split_once('-').unwrap();
                range_start = Some((start.parse::<usize>().unwrap(), end.parse::<usize>().ok()));
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let path = path.split('?').next().unwrap().to_string();
        let file = self.files.lock().unwrap().get(&path).cloned();
        let listing = self.listings.lock().unwrap().get(&path).cloned();
        let response = match (file, listing) {
            (Some(f), _) => {
                let len = f.body.len();
                let (start, end) = match range_start {
                    Some((s, Some(e))) => (s, e.min(len - 1)),
                    Some((s, None)) => (s, len - 1),
                    None => (0, len - 1),
                };
                let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\netag: \"{}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-range: bytes {start}-{end}/{len}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    f.etag,
                    end + 1 - start
                )
                .into_bytes();
                head.extend_from_slice(&f.body[start..=end]);
                head
            }
            (None, Some(files)) => {
                let siblings: Vec<_> = files
                    .iter()
                    .map(|f| serde_json::json!({ "rfilename": f }))
                    .collect();
                let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            (None, None) => {
                b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\ncontent-length: 15\r\nconnection: close\r\n\r\nEntry not found"
                    .to_vec()
            }
        };
        let _ = stream.write_all(&response);
    }
}

fn wick(dir: &Path, endpoint: &str, hf_home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.args(args)
        .current_dir(dir)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .stdin(Stdio::null());
    // A proxy from the environment must not take loopback requests elsewhere.
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("wick runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn succeeds(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "wick failed: {t}");
    t
}

fn fails_with(o: &Output, needles: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "expected failure, got success: {t}");
    assert!(!t.contains("panicked"), "wick panicked: {t}");
    for n in needles {
        assert!(t.contains(n), "error should mention {n:?}: {t}");
    }
}

fn jsonl(n: usize, offset: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let i = i + offset;
            format!(
                "{}\n",
                serde_json::json!({
                    "en": format!("the {} cat saw {} dogs", i % 7, i),
                    "fr": format!("le chat {} a vu {} chiens", i % 7, i),
                })
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn snapshot(hf_home: &Path, repo_folder: &str, file: &str) -> PathBuf {
    hf_home
        .join("hub")
        .join(repo_folder)
        .join("snapshots")
        .join(COMMIT)
        .join(file)
}

const TINY_MODEL: &str = r#"
vocab_size = 300
min_frequency = 1
max_len = 30

[model]
d_model = 16
n_heads = 2
encoder_layers = 1
decoder_layers = 1
d_ff = 32
max_positions = 64

[train]
max_steps = 4
max_epochs = 0
max_minutes = 0
batch_tokens = 400
warmup_steps = 2
validate_every = 2
valid_max_sentences = 10
"#;

#[test]
fn hub_paths_through_a_local_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hf_home = dir.join("hf-home");
    let hub = FakeHub::default();
    let train = jsonl(300, 0);
    let dev = jsonl(20, 1000);
    hub.add("datasets/wick-test/tiny", "train.jsonl", lfs(&train));
    hub.add("datasets/wick-test/tiny", "dev.jsonl", git(&dev));
    // Served bytes that do not match the hash the server names them by.
    hub.add(
        "datasets/wick-test/broken",
        "train.jsonl",
        Served {
            body: b"{\"en\": \"tampered\"}\n".to_vec(),
            etag: lfs(&train).etag,
        },
    );
    let endpoint = hub.start();

    // A whole repository: every file lands in the standard cache layout.
    let out = succeeds(&wick(
        dir,
        &endpoint,
        &hf_home,
        &[],
        &["data", "fetch", "hf://datasets/wick-test/tiny"],
    ));
    let cached = snapshot(&hf_home, "datasets--wick-test--tiny", "train.jsonl");
    assert!(out.contains(&cached.display().to_string()), "{out}");
    assert_eq!(std::fs::read(&cached).unwrap(), train);
    assert_eq!(
        std::fs::read(snapshot(&hf_home, "datasets--wick-test--tiny", "dev.jsonl")).unwrap(),
        dev
    );

    // Cache hit: not a single request.
    let before = hub.requests.load(Ordering::SeqCst);
    succeeds(&wick(
        dir,
        &endpoint,
        &hf_home,
        &[],
        &["data", "fetch", "hf://datasets/wick-test/tiny/train.jsonl"],
    ));
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        before,
        "a cached file was downloaded again"
    );

    // Offline: cached files work even with no server; missing ones say how to get them.
    let dead = "http://127.0.0.1:9";
    let offline = [("HF_HUB_OFFLINE", "1")];
    succeeds(&wick(
        dir,
        dead,
        &hf_home,
        &offline,
        &["data", "fetch", "hf://datasets/wick-test/tiny/dev.jsonl"],
    ));
    fails_with(
        &wick(
            dir,
            dead,
            &hf_home,
            &offline,
            &["data", "fetch", "hf://datasets/wick-test/other/x.jsonl"],
        ),
        &[
            "hf://datasets/wick-test/other/x.jsonl",
            "not in the hub cache",
            "HF_HUB_OFFLINE",
            "wick data fetch",
        ],
    );
    fails_with(
        &wick(
            dir,
            &endpoint,
            &hf_home,
            &[],
            &[
                "data",
                "fetch",
                "--offline",
                "hf://datasets/wick-test/other/x.jsonl",
            ],
        ),
        &["offline"],
    );

    // Unknown file, unreachable server, malformed path.
    fails_with(
        &wick(
            dir,
            &endpoint,
            &hf_home,
            &[],
            &["data", "fetch", "hf://datasets/wick-test/tiny/nope.jsonl"],
        ),
        &[
            "cannot download hf://datasets/wick-test/tiny/nope.jsonl",
            "HTTP 404",
        ],
    );
    fails_with(
        &wick(
            dir,
            dead,
            &hf_home,
            &[],
            &["data", "fetch", "hf://datasets/wick-test/other/x.jsonl"],
        ),
        &["cannot reach http://127.0.0.1:9", "HF_HUB_OFFLINE"],
    );
    fails_with(
        &wick(
            dir,
            &endpoint,
            &hf_home,
            &[],
            &["data", "fetch", "hf://just-a-name"],
        ),
        &["hf://just-a-name", "OWNER/NAME"],
    );

    // Corrupted download: an error, and nothing of it left in the cache.
    fails_with(
        &wick(
            dir,
            &endpoint,
            &hf_home,
            &[],
            &[
                "data",
                "fetch",
                "hf://datasets/wick-test/broken/train.jsonl",
            ],
        ),
        &[
            "corrupted download of hf://datasets/wick-test/broken/train.jsonl",
            "removed from the cache",
        ],
    );
    assert!(!snapshot(&hf_home, "datasets--wick-test--broken", "train.jsonl").exists());
    let blobs = hf_home.join("hub/datasets--wick-test--broken/blobs");
    // (hf-hub leaves its `<etag>.lock` files behind, as the Python hub client does.)
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_none_or(|e| e != "lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "corrupted blob left in the cache: {left:?}"
    );

    // Training straight from hub paths; the manifest keeps the hf:// names and the hashes.
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ntrain = {{ jsonl = \"hf://datasets/wick-test/tiny/train.jsonl\", src = \"en\", tgt = \"fr\" }}\n\
             dev = {{ jsonl = \"hf://datasets/wick-test/tiny/dev.jsonl\", src = \"en\", tgt = \"fr\" }}\n\
             test = {{ jsonl = \"hf://datasets/wick-test/tiny/dev.jsonl\", src = \"en\", tgt = \"fr\" }}\n{TINY_MODEL}"
        ),
    )
    .unwrap();
    succeeds(&wick(
        dir,
        &endpoint,
        &hf_home,
        &[],
        &[
            "train",
            "--config",
            "hub.toml",
            "--run-dir",
            "r1",
            "--samples",
            "0",
        ],
    ));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r1/manifest.json")).unwrap())
            .unwrap();
    let files = manifest["data"].as_array().unwrap();
    assert_eq!(files[0]["path"], "hf://datasets/wick-test/tiny/train.jsonl");
    assert_eq!(files[0]["sha256"], lfs(&train).etag);

    // A tokenizer from a model repository: the second run uses it as it is.
    let tokenizer = std::fs::read(dir.join("r1/tokenizer.json")).unwrap();
    hub.add("wick-test/tok", "tokenizer.json", git(&tokenizer));
    succeeds(&wick(
        dir,
        &endpoint,
        &hf_home,
        &[],
        &[
            "train",
            "--config",
            "hub.toml",
            "--run-dir",
            "r2",
            "--samples",
            "0",
            "--set",
            "data.tokenizer=\"hf://wick-test/tok/tokenizer.json\"",
            "--set",
            "data.vocab_size=5000",
        ],
    ));
    assert_eq!(
        std::fs::read(dir.join("r2/tokenizer.json")).unwrap(),
        tokenizer
    );

    // `data fetch --config` finds every hf:// path of a config, here offline from the cache.
    let out = succeeds(&wick(
        dir,
        dead,
        &hf_home,
        &offline,
        &["data", "fetch", "--config", "hub.toml", "--json"],
    ));
    let listed: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{out}");
}
