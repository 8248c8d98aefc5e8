//! The fused kernels against their composed reference implementations, forward and backward.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use candle_core::{DType, Device, Result, Tensor, Var};
use wick_model::ops;

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    // A deterministic pseudo-random fill (xorshift) so failures reproduce.
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Forward outputs and input gradients of `f` under a random linear functional of its output.
fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    seed: u64,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let probe = randn(out.dims(), seed)?;
    let grads = (&out * &probe)?.sum_all()?.backward()?;
    let gs = ts
        .iter()
        .map(|t| {
            grads
                .get(t)
                .cloned()
                .unwrap_or(t.zeros_like()?)
                .contiguous()
        })
        .collect::<Result<_>>()?;
    Ok((out, gs))
}

#[test]
fn softmax_kernel_matches_reference() -> Result<()> {
    for (shape, seed) in [
        (vec![3, 1], 1),
        (vec![2, 4, 5, 7], 2),
        (vec![64, 4, 24, 24], 3),
    ] {
        let mut x = (randn(&shape, seed)? * 3.0)?;
        if shape.len() == 4 {
            // Masked scores as attention produces them.
            let mask = randn(&shape, seed + 10)?.ge(1.2)?.to_dtype(DType::F32)?;
            x = (x + (mask * -1e9)?)?;
        }
        let (a, ga) = value_and_grads(|t| ops::softmax_last_dim(&t[0]), &[x.clone()], 7)?;
        let (b, gb) = value_and_grads(|t| ops::softmax_reference(&t[0]), &[x], 7)?;
        assert!(max_diff(&a, &b)? < 1e-6, "softmax forward {shape:?}");
        assert!(
            max_diff(&ga[0], &gb[0])? < 1e-5,
            "softmax backward {shape:?}"
        );
    }
    Ok(())
}

#[test]
fn layer_norm_kernel_matches_reference() -> Result<()> {
    for (shape, seed) in [(vec![1, 2], 1), (vec![3, 5, 16], 2), (vec![64, 30, 256], 3)] {
        let d = *shape.last().unwrap_or(&1);
        let x = randn(&shape, seed)?.affine(2.0, 0.5)?;
        let w = randn(&[d], seed + 1)?.affine(0.5, 1.0)?;
        let b = randn(&[d], seed + 2)?;
        let inputs = [x, w, b];
        let (a, ga) = value_and_grads(|t| ops::layer_norm(&t[0], &t[1], &t[2], 1e-5), &inputs, 9)?;
        let (r, gr) = value_and_grads(
            |t| ops::layer_norm_reference(&t[0], &t[1], &t[2], 1e-5),
            &inputs,
            9,
        )?;
        assert!(max_diff(&a, &r)? < 2e-5, "layer norm forward {shape:?}");
        for (k, name) in ["dx", "dw", "db"].iter().enumerate() {
            let scale = gr[k]
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let diff = max_diff(&ga[k], &gr[k])? / scale;
            assert!(diff < 5e-5, "layer norm {name} {shape:?}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_kernel_matches_reference() -> Result<()> {
    for (n, v, eps, seed) in [
        (1, 2, 0.0, 1),
        (7, 13, 0.1, 2),
        (1536, 4000, 0.1, 3),
        (50, 9, 0.3, 4),
    ] {
        let logits = (randn(&[n, v], seed)? * 4.0)?;
        let target = Tensor::from_vec(
            (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )?;
        let fused =
            |t: &[Tensor]| ops::label_smoothed_cross_entropy(&t[0], &target, eps).map(|r| r.0);
        let reference = |t: &[Tensor]| {
            ops::label_smoothed_cross_entropy_reference(&t[0], &target, eps).map(|r| r.0)
        };
        let (a, ga) = value_and_grads(fused, std::slice::from_ref(&logits), 5)?;
        let (b, gb) = value_and_grads(reference, std::slice::from_ref(&logits), 5)?;
        assert!(max_diff(&a, &b)? < 1e-4, "ce forward n={n} v={v}");
        assert!(max_diff(&ga[0], &gb[0])? < 1e-5, "ce backward n={n} v={v}");
        let (_, nll_a, hit_a) = ops::label_smoothed_cross_entropy(&logits, &target, eps)?;
        let (_, nll_b, hit_b) = ops::label_smoothed_cross_entropy_reference(&logits, &target, eps)?;
        assert!(max_diff(&nll_a, &nll_b)? < 1e-4);
        assert_eq!(hit_a.to_vec1::<f32>()?, hit_b.to_vec1::<f32>()?);
    }
    let bad = Tensor::new(&[5u32], &Device::Cpu)?;
    let err = ops::label_smoothed_cross_entropy(
        &Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?,
        &bad,
        0.1,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("target id 5"), "{err}");
    Ok(())
}
