//! The fused kernels against their composed reference implementations, forward and backward.
//!
//! One file on purpose: it is the list of every kernel's check, and each test is short and
//! independent, so it reads best as one list even past 600 lines.

use candle_core::{DType, Device, Result, Tensor, Var};
use wick_model::ops;

use crate::common::{max_diff, randn, value_and_grads};

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
        let (b, gb) = value_and_grads(|t| ops::reference::softmax_last_dim(&t[0]), &[x], 7)?;
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
            |t| ops::reference::layer_norm(&t[0], &t[1], &t[2], 1e-5),
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
            ops::reference::label_smoothed_cross_entropy(&t[0], &target, eps).map(|r| r.0)
        };
        let (a, ga) = value_and_grads(fused, std::slice::from_ref(&logits), 5)?;
        let (b, gb) = value_and_grads(reference, std::slice::from_ref(&logits), 5)?;
        assert!(max_diff(&a, &b)? < 1e-4, "ce forward n={n} v={v}");
        assert!(max_diff(&ga[0], &gb[0])? < 1e-5, "ce backward n={n} v={v}");
        let (_, nll_a, hit_a) = ops::label_smoothed_cross_entropy(&logits, &target, eps)?;
        let (_, nll_b, hit_b) =
            ops::reference::label_smoothed_cross_entropy(&logits, &target, eps)?;
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

#[test]
fn fused_linear_matches_reference() -> Result<()> {
    use candle_core::Module;
    use candle_nn::{VarBuilder, VarMap};
    use wick_model::layers::Linear;
    for (shape, d_out, seed) in [
        (vec![5, 7], 3, 1),
        (vec![4, 6, 16], 48, 2),
        (vec![64, 24, 128], 512, 3),
        (vec![6, 1, 32], 40, 4),
    ] {
        let d_in = *shape.last().unwrap();
        let map = VarMap::new();
        let layer = Linear::new(
            d_in,
            d_out,
            true,
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )?;
        for (name, var) in map.data().lock().unwrap().iter() {
            var.set(&randn(var.dims(), seed + name.len() as u64)?)?;
        }
        let params: Vec<Tensor> = {
            let data = map.data().lock().unwrap();
            vec![
                data["weight"].as_tensor().clone(),
                data["bias"].as_tensor().clone(),
            ]
        };
        let x = Var::from_tensor(&randn(&shape, seed + 7)?)?;
        let probe = randn(&[&shape[..shape.len() - 1], &[d_out]].concat(), seed + 8)?;
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(Tensor, Vec<Tensor>)> {
            let y = f(x.as_tensor())?;
            let g = (&y * &probe)?.sum_all()?.backward()?;
            let grads = [x.as_tensor(), &params[0], &params[1]]
                .iter()
                .map(|t| g.get(t).unwrap().clone())
                .collect();
            Ok((y, grads))
        };
        // Relative to the largest value: dW sums 1,536 products in the largest case.
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let top = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            Ok(max_diff(a, b)? / top)
        };
        for relu in [false, true] {
            let (y, g) = if relu {
                run(&|x| layer.forward_relu(x))?
            } else {
                run(&|x| layer.forward(x))?
            };
            let (yr, gr) =
                run(&|x| ops::reference::affine(x, layer.weight()?, layer.bias(), relu, None))?;
            assert_eq!(y.dims(), yr.dims());
            assert!(rel(&y, &yr)? < 1e-5, "forward {shape:?} relu {relu}");
            // The decoding copy (on the CPU) multiplies by the same weight packed in panels.
            let copy = layer.for_decoding()?;
            let panels = match copy.laid_out() {
                Some(ops::LaidOut::Panels { panels, .. }) => Some(panels.dims().to_vec()),
                _ => None,
            };
            assert_eq!(panels, Some(vec![d_out.div_ceil(64), d_in, 64]));
            // The panels stand for the weight: the copy keeps no f32 weight beside them.
            assert!(copy.weight().is_err());
            assert_eq!(copy.dims()?, layer.dims()?);
            let yd = if relu {
                copy.forward_relu(x.as_tensor())?
            } else {
                copy.forward(x.as_tensor())?
            };
            assert!(rel(&yd, &yr)? < 1e-5, "decoding copy {shape:?} relu {relu}");
            // Where kernels are barred the copy multiplies by Wᵀ unpacked from its panels.
            let yc = ops::with_reference_ops(|| {
                if relu {
                    copy.forward_relu(x.as_tensor())
                } else {
                    copy.forward(x.as_tensor())
                }
            })?;
            assert!(
                rel(&yc, &yr)? < 1e-5,
                "composed decoding copy {shape:?} relu {relu}"
            );
            for (a, b) in g.iter().zip(&gr) {
                let r = rel(a, b)?;
                assert!(r < 1e-5, "backward {shape:?} relu {relu}: {r}");
            }
        }
    }
    Ok(())
}

/// A linear layer laid out as int8 (`ops::with_weight_format`): the VNNI/portable kernel
/// against its composed twin (the same quantization in Candle ops), and both within int8's
/// error of the f32 layer.
#[test]
fn int8_linear_matches_reference_and_f32() -> Result<()> {
    use candle_core::Module;
    use candle_nn::{VarBuilder, VarMap};
    use wick_model::layers::Linear;
    use wick_model::ops::WeightFormat;
    for (shape, d_out, seed) in [
        (vec![5, 7], 3, 1),
        (vec![4, 6, 16], 48, 2),
        (vec![64, 24, 128], 512, 3),
        (vec![320, 256], 1000, 4),
    ] {
        let d_in = *shape.last().unwrap();
        let map = VarMap::new();
        let layer = Linear::new(
            d_in,
            d_out,
            true,
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )?;
        for (name, var) in map.data().lock().unwrap().iter() {
            var.set(&randn(var.dims(), seed + name.len() as u64)?)?;
        }
        let x = randn(&shape, seed + 7)?;
        let int8 = ops::with_weight_format(WeightFormat::Int8, || layer.for_decoding())?;
        assert!(matches!(int8.laid_out(), Some(ops::LaidOut::Int8 { .. })));
        // Laid out once: a later call outside the scope keeps the int8 layout.
        assert!(matches!(
            int8.for_decoding()?.laid_out(),
            Some(ops::LaidOut::Int8 { .. })
        ));
        let exact = ops::reference::affine(&x, layer.weight()?, layer.bias(), false, None)?;
        let top = exact
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?
            .max(1.0);
        for relu in [false, true] {
            let apply = |l: &Linear| {
                if relu {
                    l.forward_relu(&x)
                } else {
                    l.forward(&x)
                }
            };
            let kernel = apply(&int8)?;
            let composed = ops::with_reference_ops(|| apply(&int8))?;
            assert_eq!(kernel.dims(), exact.dims());
            let d = max_diff(&kernel, &composed)? / top;
            assert!(
                d < 1e-5,
                "int8 kernel vs composed {shape:?} relu {relu}: {d}"
            );
            let f32_out = if relu { exact.relu()? } else { exact.clone() };
            // Two roundings of 1/254 of each row's range, over d_in terms of random sign.
            let d = max_diff(&kernel, &f32_out)? / top;
            assert!(d < 0.02, "int8 vs f32 {shape:?} relu {relu}: {d}");
        }
    }
    Ok(())
}

#[test]
fn feed_forward_dropout_fused_equals_composed() -> Result<()> {
    use candle_nn::{VarBuilder, VarMap};
    use wick_model::DropoutRng;
    use wick_model::layers::FeedForward;
    // The ReLU and the dropout folded into fc1's node: the same mask from the same point of
    // the stream and the same arithmetic as the separate nodes, so equal bit for bit, forward
    // and backward; training mode only changes anything with p > 0.
    for (shape, d_ff, p) in [
        (vec![3, 5, 8], 32, 0.3),
        (vec![7, 16], 24, 0.1),
        (vec![2, 3, 4], 8, 0.0),
    ] {
        let d = *shape.last().unwrap();
        let map = VarMap::new();
        let rng = DropoutRng::new(5);
        let ffn = FeedForward::new(
            d,
            d_ff,
            p,
            rng.clone(),
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )?;
        for (i, var) in map.all_vars().iter().enumerate() {
            var.set(&randn(var.dims(), 20 + i as u64)?)?;
        }
        let x = Var::from_tensor(&randn(&shape, 9)?)?;
        let probe = randn(&shape, 10)?;
        let mut vars = map.all_vars();
        vars.push(x.clone());
        let saved = rng.state()?;
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Vec<Vec<f32>>> {
            rng.restore(saved.clone())?;
            let y = f(x.as_tensor())?;
            let g = (&y * &probe)?.sum_all()?.backward()?;
            let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in &vars {
                out.push(g.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(out)
        };
        let fused = run(&|x| ffn.forward_t(x, true))?;
        let composed = run(&|x| ffn.forward_t_reference(x, true))?;
        assert_eq!(fused, composed, "{shape:?} d_ff {d_ff} p {p}");
        // Dropout did drop (and scale) something when on; eval mode is the plain layer.
        let plain = run(&|x| ffn.forward_t(x, false))?;
        assert_eq!(plain != fused, p > 0.0, "{shape:?} p {p}");
    }
    Ok(())
}

#[test]
fn projected_cross_entropy_matches_composed() -> Result<()> {
    for (n, d, v, eps, seed) in [
        (5, 4, 7, 0.1, 1),
        (37, 16, 300, 0.0, 2),
        (96, 32, 1000, 0.1, 3),
    ] {
        let hidden = randn(&[n, d], seed)?;
        let weight = randn(&[v, d], seed + 1)?;
        let target: Vec<u32> = (0..n)
            .map(|i| ((i * 7 + seed as usize) % v) as u32)
            .collect();
        let target = Tensor::from_vec(target, n, &Device::Cpu)?;
        // Padded rows have zero weight in the loss: their gradient must vanish.
        let row_weight: Vec<f32> = (0..n).map(|i| if i % 5 == 4 { 0.0 } else { 1.0 }).collect();
        let row_weight = Tensor::from_vec(row_weight, n, &Device::Cpu)?;
        let run = |fused: bool| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
            let (h, w) = (Var::from_tensor(&hidden)?, Var::from_tensor(&weight)?);
            let (s, nll, hits) = if fused {
                ops::projected_cross_entropy(h.as_tensor(), w.as_tensor(), None, &target, eps)?
            } else {
                let logits = h.as_tensor().matmul(&w.as_tensor().t()?)?;
                ops::reference::label_smoothed_cross_entropy(&logits, &target, eps)?
            };
            let grads = (&s * &row_weight)?.sum_all()?.backward()?;
            Ok((
                vec![s, nll, hits],
                vec![
                    grads.get(h.as_tensor()).unwrap().clone(),
                    grads.get(w.as_tensor()).unwrap().clone(),
                ],
            ))
        };
        let (out, g) = run(true)?;
        let (out_r, g_r) = run(false)?;
        for (a, b) in out.iter().zip(&out_r) {
            assert!(
                max_diff(a, b)? < 1e-4,
                "forward n={n} v={v}: {}",
                max_diff(a, b)?
            );
        }
        for (a, b) in g.iter().zip(&g_r) {
            assert!(
                max_diff(a, b)? < 1e-5,
                "backward n={n} v={v}: {}",
                max_diff(a, b)?
            );
        }
        let padded = g[0].narrow(0, 4, 1)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(padded, 0.0);
    }
    Ok(())
}

#[test]
fn decoding_argmax_and_log_softmax_match_candle() -> Result<()> {
    use candle_core::D;
    let x = (randn(&[5, 1037], 41)? * 4.0)?;
    let got = ops::argmax_last_dim(&x)?;
    assert_eq!(got.dims(), &[5]);
    assert_eq!(
        got.to_vec1::<u32>()?,
        x.argmax(D::Minus1)?.to_vec1::<u32>()?
    );
    // Ties go to the first maximum, as a left-to-right scan finds it.
    let tied = Tensor::new(&[[1f32, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]], &Device::Cpu)?;
    assert_eq!(ops::argmax_last_dim(&tied)?.to_vec1::<u32>()?, [1, 0]);
    let want = candle_nn::ops::log_softmax(&x, D::Minus1)?;
    assert!(max_diff(&ops::log_softmax_last_dim(&x)?, &want)? < 1e-5);
    Ok(())
}

#[test]
fn matmul_matches_candle_on_views() -> Result<()> {
    // Small products take gemm's own path; otherwise the output is split along its longer
    // side: ≥ 128 rows into row blocks per thread, ≥ 1024 columns (more than the rows) into
    // column blocks (a decoding step's projection).
    for (m, k, n) in [
        (3, 5, 7),
        (64, 33, 17),
        (300, 129, 65),
        (1031, 40, 9),
        (7, 24, 1037),
    ] {
        let a = randn(&[m, k], 1)?;
        let b = randn(&[k, n], 2)?;
        let want = a.matmul(&b)?;
        let got = ops::matmul(&a, &b)?;
        assert!(max_diff(&got, &want)? < 1e-4, "({m}×{k})·({k}×{n})");
        // Transposed views (as x·Wᵀ and dYᵀ·x read them) and a narrowed one.
        let at = randn(&[k, m], 3)?.t()?;
        let bt = randn(&[n, k], 4)?.t()?;
        let want = at.contiguous()?.matmul(&bt.contiguous()?)?;
        assert!(max_diff(&ops::matmul(&at, &bt)?, &want)? < 1e-4);
        let wide = randn(&[m, k + 6], 5)?;
        let a_narrow = wide.narrow(1, 3, k)?;
        let want = a_narrow.contiguous()?.matmul(&b)?;
        assert!(max_diff(&ops::matmul(&a_narrow, &b)?, &want)? < 1e-4);
    }
    Ok(())
}

#[test]
fn transpose_matches_candle() -> Result<()> {
    for (r, c, seed) in [(1, 1, 1), (5, 3, 2), (33, 70, 3), (64, 1037, 4), (0, 4, 5)] {
        let x = randn(&[r, c], seed)?;
        let y = ops::transpose_contiguous(&x)?;
        assert_eq!(y.dims(), &[c, r]);
        assert!(y.is_contiguous());
        let (got, want) = (y.flatten_all()?, x.t()?.contiguous()?.flatten_all()?);
        assert_eq!(got.to_vec1::<f32>()?, want.to_vec1::<f32>()?, "{r}×{c}");
    }
    Ok(())
}

#[test]
fn index_select_prefix_copies_the_held_positions() -> Result<()> {
    let buf = randn(&[5, 7, 6], 91)?;
    for (rows, len) in [
        (vec![4u32, 0, 0, 2], 3),
        (vec![1, 3], 7),
        (vec![2], 0),
        (vec![], 4),
    ] {
        let idx = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        let got = ops::index_select_prefix(&buf, &idx, len)?;
        assert_eq!(got.dims(), &[rows.len(), 7, 6]);
        if rows.is_empty() {
            continue; // Candle cannot read a narrowed view of an empty tensor back
        }
        let want = buf.index_select(&idx, 0)?;
        let held = |t: &Tensor| t.narrow(1, 0, len)?.flatten_all()?.to_vec1::<f32>();
        assert_eq!(held(&got)?, held(&want)?);
        let rest = got
            .narrow(1, len, 7 - len)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(rest.iter().all(|&x| x == 0.0), "positions past {len}");
    }
    let bad = Tensor::new(&[1u32, 5], &Device::Cpu)?;
    let err = ops::index_select_prefix(&buf, &bad, 2).unwrap_err();
    assert!(err.to_string().contains("index 5 out of range"), "{err}");
    Ok(())
}

/// The in-place selection writes exactly the held positions of the chosen rows, into the first
/// rows of a destination that may have more, and leaves everything else of it as it was.
#[test]
fn select_prefix_into_writes_the_held_positions_in_place() -> Result<()> {
    let src = randn(&[5, 7, 6], 92)?;
    for (rows, len) in [(vec![4u32, 0, 0, 2], 3), (vec![1, 3], 7), (vec![2], 0)] {
        let old = randn(&[6, 7, 6], 93)?; // more rows than the selection
        let dst = old.copy()?;
        let head = dst.narrow(0, 0, rows.len())?;
        ops::select_prefix_into(&head, &src, &rows, len)?;
        let idx = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        let want = src.index_select(&idx, 0)?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let held = |t: &Tensor| t.narrow(0, 0, rows.len())?.narrow(1, 0, len);
        if len > 0 {
            assert_eq!(flat(&held(&dst)?)?, flat(&want.narrow(1, 0, len)?)?);
        }
        // Positions past `len` and rows past the selection keep their old values.
        let rest = |t: &Tensor| t.narrow(0, 0, rows.len())?.narrow(1, len, 7 - len);
        if len < 7 {
            assert_eq!(flat(&rest(&dst)?)?, flat(&rest(&old)?)?);
        }
        let below = |t: &Tensor| t.narrow(0, rows.len(), 6 - rows.len());
        assert_eq!(flat(&below(&dst)?)?, flat(&below(&old)?)?);
    }
    let dst = Tensor::zeros((2, 7, 6), DType::F32, &Device::Cpu)?;
    let err = ops::select_prefix_into(&dst, &src, &[1, 5], 2).unwrap_err();
    assert!(err.to_string().contains("index 5 out of range"), "{err}");
    let err = ops::select_prefix_into(&dst, &src, &[1], 2).unwrap_err();
    assert!(err.to_string().contains("1 rows of 2 positions"), "{err}");
    Ok(())
}

#[test]
fn embedding_kernel_matches_reference() -> Result<()> {
    // Learned positions (a variable) get a gradient too; the ids repeat, so rows of the
    // table's gradient are sums.
    for (b, t, v, d, offset, seed) in [
        (2, 3, 7, 4, 0, 1),
        (5, 9, 30, 16, 2, 2),
        (64, 24, 300, 128, 5, 3),
    ] {
        let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
        let table = randn(&[v, d], seed)?;
        let positions = randn(&[offset + t + 3, d], seed + 1)?;
        let scale = (d as f64).sqrt();
        let (y, g) = value_and_grads(
            |x| ops::embed(&ids, &x[0], scale, &x[1], offset),
            &[table.clone(), positions.clone()],
            seed,
        )?;
        let (yr, gr) = value_and_grads(
            |x| ops::reference::embed(&ids, &x[0], scale, &x[1], offset),
            &[table, positions],
            seed,
        )?;
        assert_eq!(y.dims(), &[b, t, d]);
        assert!(max_diff(&y, &yr)? < 1e-5, "embed forward {b}x{t}");
        assert!(max_diff(&g[0], &gr[0])? < 1e-4, "embed d table {b}x{t}");
        assert!(max_diff(&g[1], &gr[1])? < 1e-4, "embed d positions {b}x{t}");
    }
    let ids = Tensor::new(&[[3u32, 9]], &Device::Cpu)?;
    let err = ops::embed(&ids, &randn(&[5, 4], 1)?, 1.0, &randn(&[4, 4], 2)?, 0).unwrap_err();
    assert!(err.to_string().contains("token id 9"), "{err}");
    Ok(())
}

#[test]
fn residual_sum_kernel_matches_reference() -> Result<()> {
    use wick_model::layers::{Dropout, DropoutRng};
    for (shape, p) in [
        (vec![3, 5, 8], 0.0),
        (vec![64, 24, 128], 0.1),
        (vec![2, 7], 0.5),
    ] {
        let n: usize = shape.iter().product();
        let mask = || -> Result<Option<Vec<f32>>> {
            Dropout::new(p, DropoutRng::new(3)).mask_if_active(n, true)
        };
        let inputs = [randn(&shape, 1)?, randn(&shape, 2)?];
        let (y, g) = value_and_grads(|x| ops::residual_add(&x[0], &x[1], mask()?), &inputs, 4)?;
        let (yr, gr) = value_and_grads(
            |x| ops::reference::residual_add(&x[0], &x[1], mask()?),
            &inputs,
            4,
        )?;
        // The same arithmetic on both paths: equal bit for bit.
        assert_eq!(max_diff(&y, &yr)?, 0.0, "{shape:?} p {p}");
        assert_eq!(max_diff(&g[0], &gr[0])?, 0.0);
        assert_eq!(max_diff(&g[1], &gr[1])?, 0.0);
    }
    Ok(())
}

#[test]
fn affine_without_bias_and_projection_with_bias_match_reference() -> Result<()> {
    let (x, w, b) = (
        randn(&[4, 6, 16], 1)?,
        randn(&[24, 16], 2)?,
        randn(&[24], 3)?,
    );
    let (y, g) = value_and_grads(
        |t| ops::affine(&t[0], &t[1], None, false, None),
        &[x.clone(), w.clone()],
        5,
    )?;
    let (yr, gr) = value_and_grads(
        |t| ops::reference::affine(&t[0], &t[1], None, false, None),
        &[x, w.clone()],
        5,
    )?;
    assert!(max_diff(&y, &yr)? < 1e-5);
    assert!(max_diff(&g[0], &gr[0])? < 1e-4 && max_diff(&g[1], &gr[1])? < 1e-4);
    // An output layer with a bias: the loss over `h·Wᵀ + b`.
    let h = randn(&[12, 16], 6)?;
    let target = Tensor::from_vec((0..12u32).map(|i| (i * 5) % 24).collect(), 12, &Device::Cpu)?;
    let (l, gl) = value_and_grads(
        |t| Ok(ops::projected_cross_entropy(&t[0], &t[1], Some(&t[2]), &target, 0.1)?.0),
        &[h.clone(), w.clone(), b.clone()],
        7,
    )?;
    let (lr, glr) = value_and_grads(
        |t| {
            let logits = t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2])?;
            Ok(ops::reference::label_smoothed_cross_entropy(&logits, &target, 0.1)?.0)
        },
        &[h, w, b],
        7,
    )?;
    assert!(max_diff(&l, &lr)? < 1e-5);
    for (a, r) in gl.iter().zip(&glr) {
        assert!(max_diff(a, r)? < 1e-5);
    }
    Ok(())
}

#[test]
fn recurrent_cell_kernels_match_reference() -> Result<()> {
    for (rows, d, seed) in [(1, 1, 1), (3, 5, 2), (64, 128, 3), (7, 33, 4)] {
        // Pre-activations up to ±8, so that the gates saturate in places.
        let gi3 = (randn(&[rows, 3 * d], seed)? * 4.0)?;
        let gh3 = (randn(&[rows, 3 * d], seed + 1)? * 4.0)?;
        let gi4 = (randn(&[rows, 4 * d], seed + 2)? * 4.0)?;
        let gh4 = (randn(&[rows, 4 * d], seed + 3)? * 4.0)?;
        let state = randn(&[rows, d], seed + 4)?;
        let check =
            |what: &str, a: (Tensor, Vec<Tensor>), r: (Tensor, Vec<Tensor>)| -> Result<()> {
                assert!(max_diff(&a.0, &r.0)? < 2e-6, "{what} forward ({rows}×{d})");
                for (k, (ga, gr)) in a.1.iter().zip(&r.1).enumerate() {
                    let diff = max_diff(ga, gr)?;
                    assert!(diff < 2e-5, "{what} gradient {k} ({rows}×{d}): {diff}");
                }
                Ok(())
            };
        let gru = [gi3, gh3, state.clone()];
        check(
            "GRU",
            value_and_grads(|t| ops::gru_cell(&t[0], &t[1], &t[2]), &gru, 5)?,
            value_and_grads(|t| ops::reference::gru_cell(&t[0], &t[1], &t[2]), &gru, 5)?,
        )?;
        let lstm = [gi4, gh4, state];
        let fused = |t: &[Tensor]| {
            let (h, c) = ops::lstm_cell(&t[0], &t[1], &t[2])?;
            Tensor::cat(&[&h, &c], 1)
        };
        check(
            "LSTM",
            value_and_grads(fused, &lstm, 6)?,
            value_and_grads(|t| ops::reference::lstm_cell(&t[0], &t[1], &t[2]), &lstm, 6)?,
        )?;
    }
    Ok(())
}

#[test]
fn additive_scores_kernel_matches_reference() -> Result<()> {
    for (b, src, d, seed) in [(1, 1, 1, 1), (3, 7, 5, 2), (64, 24, 256, 3), (5, 3, 33, 4)] {
        let inputs = [
            (randn(&[b, src, d], seed)? * 2.0)?,
            (randn(&[b, d], seed + 1)? * 2.0)?,
            randn(&[d], seed + 2)?,
        ];
        let (a, ga) = value_and_grads(|t| ops::additive_scores(&t[0], &t[1], &t[2]), &inputs, 8)?;
        let (r, gr) = value_and_grads(
            |t| ops::reference::additive_scores(&t[0], &t[1], &t[2]),
            &inputs,
            8,
        )?;
        let scale = r.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
        assert!(max_diff(&a, &r)? / scale < 2e-6, "forward {b}×{src}×{d}");
        for (k, name) in ["keys", "query", "v"].iter().enumerate() {
            let scale = gr[k]
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let diff = max_diff(&ga[k], &gr[k])? / scale;
            assert!(diff < 2e-5, "gradient of {name} ({b}×{src}×{d}): {diff}");
        }
    }
    Ok(())
}

#[test]
fn glu_and_weight_norm_kernels_match_reference() -> Result<()> {
    for (rows, h, seed) in [(1, 1, 1), (3, 5, 2), (1536, 256, 3), (7, 33, 4)] {
        let x = (randn(&[rows, 2 * h], seed)? * 3.0)?;
        let (a, ga) = value_and_grads(|t| ops::glu(&t[0]), std::slice::from_ref(&x), 5)?;
        let (r, gr) = value_and_grads(|t| ops::reference::glu(&t[0]), &[x], 5)?;
        assert!(max_diff(&a, &r)? < 2e-6, "glu forward {rows}×{h}");
        assert!(max_diff(&ga[0], &gr[0])? < 2e-5, "glu backward {rows}×{h}");
        let v = randn(&[rows, 2 * h], seed + 1)?;
        let g = randn(&[rows, 1], seed + 2)?;
        let inputs = [v, g];
        let (a, ga) = value_and_grads(|t| ops::weight_norm(&t[0], &t[1]), &inputs, 6)?;
        let (r, gr) = value_and_grads(|t| ops::reference::weight_norm(&t[0], &t[1]), &inputs, 6)?;
        assert!(max_diff(&a, &r)? < 2e-6, "weight norm forward {rows}×{h}");
        for (k, name) in ["v", "g"].iter().enumerate() {
            let scale = gr[k]
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            let diff = max_diff(&ga[k], &gr[k])? / scale;
            assert!(
                diff < 2e-5,
                "weight norm gradient of {name} ({rows}×{h}): {diff}"
            );
        }
    }
    Ok(())
}

#[test]
fn unfold_kernel_matches_reference() -> Result<()> {
    for (b, t, h, kernel, left, seed) in [
        (1, 1, 1, 1, 0, 1),
        (2, 5, 3, 3, 1, 2),
        (3, 4, 7, 3, 2, 3),
        (2, 2, 4, 5, 2, 4),
        (32, 24, 256, 3, 1, 5),
    ] {
        let x = randn(&[b, t, h], seed)?;
        let (a, ga) = value_and_grads(
            |v| ops::unfold(&v[0], kernel, left),
            std::slice::from_ref(&x),
            7,
        )?;
        let (r, gr) = value_and_grads(|v| ops::reference::unfold(&v[0], kernel, left), &[x], 7)?;
        assert_eq!(
            max_diff(&a, &r)?,
            0.0,
            "unfold forward {b}×{t}×{h}, k {kernel}, left {left}"
        );
        assert!(
            max_diff(&ga[0], &gr[0])? < 1e-5,
            "unfold backward {b}×{t}×{h}, k {kernel}"
        );
    }
    Ok(())
}

#[test]
fn the_reference_path_reaches_no_kernel() -> Result<()> {
    let x = randn(&[4, 8], 1)?;
    // Forced on this thread: the dispatch picks the composed twin, and a kernel called
    // directly refuses to run.
    let (forced, refused) = ops::with_reference_ops(|| {
        let y = ops::softmax_last_dim(&x)?;
        let r = ops::reference::softmax_last_dim(&x)?;
        Ok::<_, candle_core::Error>((max_diff(&y, &r)?, wick_kernels::rows::softmax(&x).is_err()))
    })?;
    assert_eq!(forced, 0.0);
    assert!(refused);
    assert!(!ops::reference_ops_forced(), "the switch is scoped");
    assert!(wick_kernels::rows::softmax(&x).is_ok());
    // Work handed to other threads takes the switch along through a scope.
    use rayon::prelude::*;
    let barred: Vec<bool> = ops::with_reference_ops(|| {
        let scope = ops::Scope::current();
        (0..8)
            .into_par_iter()
            .map(|_| scope.enter(ops::reference_ops_forced))
            .collect()
    });
    assert!(barred.iter().all(|&b| b));
    Ok(())
}
