//! AdamW: the fused CPU update against torch.optim.AdamW (fixture written by
//! `scripts/reference/golden_adamw.py`) and against the composed Candle form, the gradient
//! norm, and resuming from saved moments.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use wick_train::optim::AdamW;

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw.safetensors");
    wick_train::checkpoint::load(&path, &Device::Cpu).unwrap()
}

const NAMES: [&str; 3] = ["w", "b", "g"];

fn vars(tensors: &HashMap<String, Tensor>) -> Vec<(String, Var)> {
    NAMES
        .iter()
        .map(|k| {
            let t = tensors[&format!("init.{k}")].copy().unwrap();
            (k.to_string(), Var::from_tensor(&t).unwrap())
        })
        .collect()
}

/// The fixture's raw gradients of step `t` as a GradStore for `vars`.
fn grads(tensors: &HashMap<String, Tensor>, vars: &[(String, Var)], t: usize) -> GradStore {
    // GradStore has no public constructor: take one from a backward pass and overwrite it.
    let mut store = vars
        .iter()
        .map(|(_, v)| v.as_tensor().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    for (k, v) in vars {
        store.insert(v.as_tensor(), tensors[&format!("grad.{t}.{k}")].clone());
    }
    store
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    let d = d.max(0).unwrap().to_scalar::<f32>().unwrap();
    let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d / s.to_scalar::<f32>().unwrap().max(1e-30)
}

fn schedule(meta: &HashMap<String, String>) -> Vec<(f64, f64)> {
    let lrs: Vec<f64> = serde_json::from_str(&meta["lrs"]).unwrap();
    let scales: Vec<f64> = serde_json::from_str(&meta["scales"]).unwrap();
    lrs.into_iter().zip(scales).collect()
}

fn optimizer(vars: &[(String, Var)], meta: &HashMap<String, String>) -> AdamW {
    let betas: (f64, f64) = serde_json::from_str(&meta["betas"]).unwrap();
    let eps: f64 = serde_json::from_str(&meta["eps"]).unwrap();
    let wd: f64 = serde_json::from_str(&meta["weight_decay"]).unwrap();
    AdamW::new(vars.to_vec(), betas.0, betas.1, eps, wd).unwrap()
}

#[test]
fn fused_and_composed_updates_match_pytorch() {
    let (tensors, meta) = fixture();
    for fused in [true, false] {
        let vars = vars(&tensors);
        let mut opt = optimizer(&vars, &meta);
        for (t, (lr, scale)) in schedule(&meta).into_iter().enumerate() {
            let g = grads(&tensors, &vars, t);
            if fused {
                opt.step(&g, lr, scale).unwrap();
            } else {
                opt.step_composed(&g, lr, scale).unwrap();
            }
        }
        let state = opt.state_tensors().unwrap();
        for (k, v) in &vars {
            let d = rel_diff(v.as_tensor(), &tensors[&format!("expected.{k}")]);
            assert!(d < 1e-6, "fused {fused}: {k} differs from PyTorch by {d}");
            for m in ["m", "v"] {
                let key = format!("{k}.{m}");
                let d = rel_diff(&state[&key], &tensors[&format!("expected.{key}")]);
                // A few f32 roundings of g² apart (relative to the largest element).
                assert!(d < 3e-6, "fused {fused}: moment {key} differs by {d}");
            }
        }
    }
}

#[test]
fn grad_norm_is_the_global_l2_norm() {
    let (tensors, meta) = fixture();
    let vars = vars(&tensors);
    let opt = optimizer(&vars, &meta);
    let g = grads(&tensors, &vars, 1);
    let mut want = 0f64;
    for k in NAMES {
        for x in tensors[&format!("grad.1.{k}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        {
            want += (x as f64) * (x as f64);
        }
    }
    let got = opt.grad_norm(&g).unwrap();
    assert!(
        (got - want.sqrt()).abs() <= 1e-6 * want.sqrt(),
        "{got} vs {}",
        want.sqrt()
    );
}

#[test]
fn resuming_from_saved_moments_continues_identically() {
    let (tensors, meta) = fixture();
    let steps = schedule(&meta);
    let vars_a = vars(&tensors);
    let mut a = optimizer(&vars_a, &meta);
    for (t, &(lr, scale)) in steps.iter().enumerate().take(2) {
        a.step(&grads(&tensors, &vars_a, t), lr, scale).unwrap();
    }
    // What a checkpoint holds: copies of the weights and moments at this point.
    let saved: HashMap<String, Tensor> = a
        .state_tensors()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.copy().unwrap()))
        .collect();
    let vars_b: Vec<(String, Var)> = vars_a
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut b = optimizer(&vars_b, &meta);
    b.load_state(&saved, a.step_count()).unwrap();
    for (t, &(lr, scale)) in steps.iter().enumerate().skip(2) {
        a.step(&grads(&tensors, &vars_a, t), lr, scale).unwrap();
        b.step(&grads(&tensors, &vars_b, t), lr, scale).unwrap();
    }
    for ((k, va), (_, vb)) in vars_a.iter().zip(&vars_b) {
        let (x, y) = (
            va.as_tensor().flatten_all().unwrap(),
            vb.as_tensor().flatten_all().unwrap(),
        );
        assert_eq!(
            x.to_vec1::<f32>().unwrap(),
            y.to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    // The saved copies are untouched by the steps after them.
    assert_ne!(
        saved["w.m"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        a.state_tensors().unwrap()["w.m"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
}
