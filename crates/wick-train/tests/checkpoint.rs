#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic
use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use wick_train::checkpoint::{load, save};

#[test]
fn save_load_round_trip_with_metadata() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "a.weight".to_string(),
        Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?,
    );
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), "12".to_string());
    save(&path, &t, meta)?;
    let (back, meta) = load(&path, &Device::Cpu)?;
    assert_eq!(
        back["a.weight"].to_vec2::<f32>()?,
        vec![vec![0., 1., 2.], vec![3., 4., 5.]]
    );
    assert_eq!(meta["step"], "12");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
    Ok(())
}

#[test]
fn truncated_or_garbage_checkpoints_are_clear_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "w".to_string(),
        Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu)?,
    );
    save(&path, &t, HashMap::new())?;
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let e = format!("{:#}", load(&path, &Device::Cpu).expect_err("truncated"));
    assert!(e.contains("c.safetensors"), "{e}");
    std::fs::write(&path, b"garbage")?;
    let e = format!("{:#}", load(&path, &Device::Cpu).expect_err("garbage"));
    assert!(
        e.contains("c.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    Ok(())
}

#[test]
fn unwritable_directory_is_reported_and_old_file_kept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("missing_dir").join("c.safetensors");
    let t = BTreeMap::new();
    let e = format!("{:#}", save(&path, &t, HashMap::new()).expect_err("no dir"));
    assert!(e.contains("c.safetensors"), "{e}");
    Ok(())
}
