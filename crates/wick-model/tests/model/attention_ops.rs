//! The attention kernel against its composed twin, forward and backward: padding, causal
//! masks, decoding steps, keys read in place from a longer buffer, attention dropout.

use candle_core::{Device, Result, Tensor};
use wick_model::ops;

use crate::common::{max_diff, randn, value_and_grads};

/// A key-padding bias `(b, 1, 1, tk)` hiding the last `pad[i]` keys of sentence `i`.
fn padding_bias(pad: &[usize], tk: usize) -> Result<Tensor> {
    let data: Vec<f32> = pad
        .iter()
        .flat_map(|&p| (0..tk).map(move |j| if j + p >= tk { -1e9 } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (pad.len(), 1, 1, tk), &Device::Cpu)
}

#[test]
fn fused_attention_matches_reference() -> Result<()> {
    use wick_model::mask::causal_bias;
    // (b, t, heads, d_k): odd sizes, one head, and the benchmark shape; key padding (with a
    // sentence that is all padding but one key) and a causal mask.
    for (b, t, heads, dk, seed) in [
        (3, 5, 2, 3, 1),
        (1, 1, 1, 8, 2),
        (4, 7, 4, 9, 3),
        (16, 24, 4, 32, 4),
        // Head widths that the per-head products cut into 16- and 8-column tiles and single
        // columns (16, 64, 40; 9 and 3 above); lengths that are not a multiple of 8, so padded keys.
        (3, 6, 2, 16, 5),
        (2, 9, 2, 64, 6),
        (2, 5, 1, 40, 7),
        // A decoding step's keys go eight at a time: d_k 12 takes the eight-key blocks
        // without the vector path (d_k 32 and 64 above take it), then two leftover keys.
        (2, 10, 3, 12, 8),
    ] {
        let d = heads * dk;
        let qkv = randn(&[b, t, 3 * d], seed)?;
        let pad: Vec<usize> = (0..b).map(|i| (i * 2) % t).collect();
        for bias in [padding_bias(&pad, t)?, causal_bias(t, &Device::Cpu)?] {
            let (y, g) = value_and_grads(
                |x| ops::attention_qkv(&x[0], &bias, heads, None),
                std::slice::from_ref(&qkv),
                seed,
            )?;
            let (yr, gr) = value_and_grads(
                |x| ops::reference::attention_qkv(&x[0], &bias, heads, None),
                std::slice::from_ref(&qkv),
                seed,
            )?;
            assert_eq!(y.dims(), &[b, t, d]);
            assert!(
                max_diff(&y, &yr)? < 1e-5,
                "self forward {b}x{t}x{heads}x{dk}"
            );
            assert!(
                max_diff(&g[0], &gr[0])? < 1e-4,
                "self backward {b}x{t}x{heads}x{dk}"
            );
        }
        // Cross-attention: different query and key lengths, queries wider than d (a packed
        // QKV row as a decoding step uses it), padded keys.
        let tq = t + 2;
        let q = randn(&[b, tq, 3 * d], seed + 10)?;
        let kv = randn(&[b, t, 2 * d], seed + 20)?;
        let bias = padding_bias(&pad, t)?;
        let (y, g) = value_and_grads(
            |x| ops::attention(&x[0], &x[1], &bias, heads, None),
            &[q.clone(), kv.clone()],
            seed,
        )?;
        let (yr, gr) = value_and_grads(
            |x| ops::reference::attention(&x[0], &x[1], &bias, heads, None),
            &[q.clone(), kv.clone()],
            seed,
        )?;
        assert_eq!(y.dims(), &[b, tq, d]);
        assert!(max_diff(&y, &yr)? < 1e-5, "cross forward");
        // A decoding step: one query per sentence, which the kernel runs key by key.
        let q1 = randn(&[b, 1, 3 * d], seed + 30)?;
        let y1 = ops::attention(&q1, &kv, &bias, heads, None)?;
        let y1r = ops::reference::attention(&q1, &kv, &bias, heads, None)?;
        assert_eq!(y1.dims(), &[b, 1, d]);
        let diff = max_diff(&y1, &y1r)?;
        assert!(
            diff < 1e-5,
            "one-query forward {b}x{t}x{heads}x{dk}: {diff}"
        );
        // The same keys as the first t rows of a longer buffer, read in place (a decoding
        // cache), for one query and for several.
        let buffer = Tensor::cat(&[&kv, &randn(&[b, 3, 2 * d], seed + 40)?], 1)?;
        let view = buffer.narrow(1, 0, t)?;
        for q in [&q1, &q] {
            let strided = ops::attention(q, &view, &bias, heads, None)?;
            let packed = ops::attention(q, &kv, &bias, heads, None)?;
            assert_eq!(max_diff(&strided, &packed)?, 0.0, "keys read in place");
        }
        assert!(max_diff(&g[0], &gr[0])? < 1e-4, "cross backward, queries");
        assert!(
            max_diff(&g[1], &gr[1])? < 1e-4,
            "cross backward, keys/values"
        );
        // Columns of the query row beyond d are not read, so their gradient is zero.
        let unused = g[0]
            .narrow(2, d, 2 * d)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(unused, 0.0);
    }
    // Padding cannot leak: changing a masked key's values leaves the output unchanged.
    let (b, t, heads, d) = (2, 6, 2, 8);
    let qkv = randn(&[b, t, 3 * d], 9)?;
    let bias = padding_bias(&[2, 0], t)?;
    let y = ops::attention_qkv(&qkv, &bias, heads, None)?;
    let mut data = qkv.flatten_all()?.to_vec1::<f32>()?;
    for j in [4, 5] {
        for c in d..3 * d {
            data[j * 3 * d + c] += 100.0; // sentence 0, padded positions 4 and 5: K and V
        }
    }
    let changed = Tensor::from_vec(data, (b, t, 3 * d), &Device::Cpu)?;
    let y2 = ops::attention_qkv(&changed, &bias, heads, None)?;
    let real = |y: &Tensor| y.narrow(0, 0, 1)?.narrow(1, 0, 4);
    assert_eq!(max_diff(&real(&y)?, &real(&y2)?)?, 0.0);
    Ok(())
}

/// A few queries of one sentence (beam hypotheses sharing its memory) get, to the bit, what
/// each gets as the single query of a sentence of its own.
#[test]
fn few_queries_get_what_single_queries_get() -> Result<()> {
    let (b, tk, heads, dk) = (3, 11, 4, 8);
    let d = heads * dk;
    let kv = randn(&[b, tk, 2 * d], 51)?;
    let bias = padding_bias(&[0, 3, 10], tk)?;
    for g in [1, 2, 5, 16] {
        let q = randn(&[b, g, d], 52 + g as u64)?;
        let together = ops::attention(&q, &kv, &bias, heads, None)?;
        let rows: Vec<u32> = (0..b as u32)
            .flat_map(|i| std::iter::repeat_n(i, g))
            .collect();
        let rows = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        let alone = ops::attention(
            &q.reshape((b * g, 1, d))?,
            &kv.index_select(&rows, 0)?,
            &bias.index_select(&rows, 0)?,
            heads,
            None,
        )?;
        let together = together.reshape((b * g, 1, d))?;
        assert_eq!(max_diff(&together, &alone)?, 0.0, "{g} queries");
        let composed = ops::reference::attention(&q, &kv, &bias, heads, None)?;
        assert!(max_diff(&together, &composed.reshape((b * g, 1, d))?)? < 1e-5);
    }
    Ok(())
}

#[test]
fn fused_attention_dropout_matches_reference() -> Result<()> {
    // d_k 8 is one 8-column tile of the per-head products, 32 two 16-column tiles.
    for dk in [8, 32] {
        attention_dropout_case(dk)?;
    }
    Ok(())
}

fn attention_dropout_case(dk: usize) -> Result<()> {
    use wick_model::layers::{Dropout, DropoutRng};
    let (b, t, heads) = (4, 9, 2);
    let d = heads * dk;
    let qkv = randn(&[b, t, 3 * d], 31)?;
    let kv = randn(&[b, t + 3, 2 * d], 32)?;
    let bias = padding_bias(&[0, 2, 4, 1], t)?;
    let cross_bias = padding_bias(&[1, 0, 3, 2], t + 3)?;
    // The same seed draws the same mask, so kernel and reference must agree to rounding,
    // forward and backward.
    let mask = |n: usize| Dropout::new(0.3, DropoutRng::new(7)).draw_mask(n);
    let n = b * heads * t * t;
    let (y, g) = value_and_grads(
        |x| ops::attention_qkv(&x[0], &bias, heads, Some(mask(n)?)),
        std::slice::from_ref(&qkv),
        5,
    )?;
    let (yr, gr) = value_and_grads(
        |x| ops::reference::attention_qkv(&x[0], &bias, heads, Some(mask(n)?)),
        std::slice::from_ref(&qkv),
        5,
    )?;
    assert!(max_diff(&y, &yr)? < 1e-5);
    assert!(max_diff(&g[0], &gr[0])? < 1e-4);
    // Dropout is on: the output differs from attention without it.
    assert!(max_diff(&y, &ops::attention_qkv(&qkv, &bias, heads, None)?)? > 1e-2);
    let q = qkv.narrow(2, 0, d)?;
    let n = b * heads * t * (t + 3);
    let (y, g) = value_and_grads(
        |x| ops::attention(&x[0], &x[1], &cross_bias, heads, Some(mask(n)?)),
        &[q.clone(), kv.clone()],
        6,
    )?;
    let (yr, gr) = value_and_grads(
        |x| ops::reference::attention(&x[0], &x[1], &cross_bias, heads, Some(mask(n)?)),
        &[q, kv],
        6,
    )?;
    assert!(max_diff(&y, &yr)? < 1e-5);
    assert!(max_diff(&g[0], &gr[0])? < 1e-4);
    assert!(max_diff(&g[1], &gr[1])? < 1e-4);
    Ok(())
}
