//! `wick data check` and `wick data fetch`.

use std::path::Path;

use anyhow::{Result, bail};
use wick_train::config::{Config, EMBEDDED_DEFAULT};

use crate::args::{DataCheckArgs, DataFetchArgs};

pub(crate) fn cmd_data_fetch(a: DataFetchArgs) -> Result<()> {
    use wick_data::hub::{Hub, HubPath};
    let mut wanted: Vec<String> = a.paths.clone();
    if let Some(path) = &a.config {
        let cfg = Config::load(path, &[])?;
        let d = &cfg.data;
        let corpus_paths = [&d.train, &d.dev, &d.test]
            .into_iter()
            .flatten()
            .flat_map(|spec| spec.paths().into_iter().map(Path::to_path_buf));
        wanted.extend(
            corpus_paths
                .chain(d.tokenizer.clone())
                .filter(|p| wick_data::hub::is_hub_path(p))
                .map(|p| p.display().to_string()),
        );
        if wanted.is_empty() {
            bail!("{} names no hf:// paths", path.display())
        }
    }
    let hub = Hub::from_env()?.offline(a.offline);
    let mut fetched = Vec::new();
    for text in &wanted {
        let Some(parsed) = HubPath::parse(text) else {
            bail!("{text}: not an hf:// path (e.g. hf://datasets/bentrevett/multi30k/train.jsonl)")
        };
        for (path, local) in hub.fetch(&parsed?)? {
            let bytes = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
            if !a.json {
                println!("{path}\t{}\t{bytes} bytes", local.display());
            }
            fetched.push(serde_json::json!({
                "path": path.to_string(),
                "local": local.display().to_string(),
                "bytes": bytes,
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(fetched));
    } else {
        eprintln!("hub cache: {}", hub.cache_dir().display());
    }
    Ok(())
}

pub(crate) fn cmd_data_check(a: DataCheckArgs) -> Result<()> {
    let cfg = match &a.config {
        Some(path) => Config::load(path, &a.overrides)?,
        None => Config::from_toml(
            EMBEDDED_DEFAULT,
            Path::new("<embedded configs/toy.toml>"),
            &a.overrides,
        )?,
    };
    let splits: Vec<(String, wick_data::CorpusSpec)> = match (&a.src, &a.tgt, &a.tsv) {
        (Some(src), Some(tgt), _) => vec![(
            "train".into(),
            wick_data::CorpusSpec::Files {
                src: src.clone(),
                tgt: tgt.clone(),
            },
        )],
        (_, _, Some(tsv)) => vec![("train".into(), wick_data::CorpusSpec::Tsv(tsv.clone()))],
        _ => {
            if cfg.data.synthetic.is_some() {
                bail!(
                    "the config's data is synthetic ([data.synthetic]); there is no corpus to check"
                )
            }
            [
                ("train", &cfg.data.train),
                ("dev", &cfg.data.dev),
                ("test", &cfg.data.test),
            ]
            .into_iter()
            .filter_map(|(n, s)| s.clone().map(|s| (n.to_string(), s)))
            .collect()
        }
    };
    let report = wick_train::datacheck::check(&splits, cfg.data.max_len, cfg.data.on_bad_line);
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.fatal.is_empty() {
        bail!(
            "{} fatal problem(s) in the data; see above",
            report.fatal.len()
        )
    }
    Ok(())
}
