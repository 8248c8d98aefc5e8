//! Shape, padding-invariance, causality and cache-equivalence tests of the Transformer, each
//! run on the kernel path and on the forced reference path.

use crate::common::*;
use candle_core::{D, IndexOp, Result, Tensor};
use wick_model::Seq2Seq;
use wick_model::search::{SpecialIds, greedy};
use wick_model::transformer::{NormPosition, Transformer, Tying};

fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 11, 17, 4, 8, EOS],
        vec![8, 8, 21, EOS],
        vec![13, EOS],
    ]
}

fn targets_in() -> Vec<Vec<u32>> {
    vec![vec![BOS, 7, 12, 19, 6], vec![BOS, 22, 10], vec![BOS]]
}

fn output_shapes() -> Result<()> {
    for cfg in all_configs() {
        let (model, _) = build(&cfg, 3)?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        assert_eq!(memory.states.dims(), &[3, 7, 32]);
        assert_eq!(memory.src_bias.dims(), &[3, 1, 1, 7]);
        assert_eq!(
            model.forward_t(&memory, &tgt_in, true)?.dims(),
            &[3, 5, VOCAB.tgt]
        );
        let attn = model.attention(&memory, &tgt_in)?;
        assert_eq!(attn.len(), cfg.decoder_layers);
        assert_eq!(attn[0].dims(), &[3, cfg.n_heads, 5, 7]);
        let mut cache = model.start_decoding(&memory)?;
        let step =
            model.decode_step(&memory, &Tensor::full(BOS, (3, 1), &device())?, &mut cache)?;
        assert_eq!(step.dims(), &[3, VOCAB.tgt]);
    }
    Ok(())
}

fn cross_attention_rows_sum_to_one_and_skip_padding() -> Result<()> {
    let (model, _) = build(&tiny_config(NormPosition::Post, Tying::All), 4)?;
    let (src, src_mask) = padded(&sources(), PAD)?;
    let (tgt_in, _) = padded(&targets_in(), PAD)?;
    let memory = model.encode(&src, &src_mask, false)?;
    for probs in model.attention(&memory, &tgt_in)? {
        let sums = probs.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
            "rows sum to {sums:?}"
        );
        // Row 2 has a source of 2 real tokens: no weight on the 5 padded positions.
        let on_pad = probs
            .i((2, .., .., 2..))?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert_eq!(on_pad, 0.0);
    }
    Ok(())
}

/// Logits at real positions, per row, as nested vectors.
fn real_logits(model: &Transformer, src_fill: u32, tgt_fill: u32) -> Result<Vec<Vec<Vec<f32>>>> {
    let (src, src_mask) = padded(&sources(), src_fill)?;
    let (tgt_in, _) = padded(&targets_in(), tgt_fill)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let logits = model.forward_t(&memory, &tgt_in, false)?;
    let mut out = Vec::new();
    for (r, row) in targets_in().iter().enumerate() {
        out.push(logits.i((r, ..row.len()))?.to_vec2::<f32>()?);
    }
    Ok(out)
}

fn padding_content_does_not_change_real_outputs() -> Result<()> {
    for cfg in all_configs() {
        let (model, _) = build(&cfg, 5)?;
        let reference = real_logits(&model, PAD, PAD)?;
        for (src_fill, tgt_fill) in [(17, PAD), (PAD, 23), (3, 11)] {
            let other = real_logits(&model, src_fill, tgt_fill)?;
            for (a, b) in reference
                .iter()
                .flatten()
                .flatten()
                .zip(other.iter().flatten().flatten())
            {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "padding changed a real output: {a} vs {b} ({cfg:?})"
                );
            }
        }
    }
    Ok(())
}

fn extra_padding_columns_do_not_change_outputs() -> Result<()> {
    let (model, _) = build(&tiny_config(NormPosition::Pre, Tying::Decoder), 6)?;
    let reference = real_logits(&model, PAD, PAD)?;
    // Append three more padding columns to every source row.
    let mut longer = sources();
    longer[0].extend([PAD, PAD, PAD]);
    let (src, mut src_mask) = padded(&longer, PAD)?;
    // The padded tail of row 0 must be masked too.
    let mut m = src_mask.to_vec2::<f32>()?;
    m[0][7..].fill(0.0);
    src_mask = Tensor::new(m, &device())?;
    let (tgt_in, _) = padded(&targets_in(), PAD)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let logits = model.forward_t(&memory, &tgt_in, false)?;
    for (r, row) in targets_in().iter().enumerate() {
        let got = logits.i((r, ..row.len()))?.to_vec2::<f32>()?;
        for (a, b) in got.iter().flatten().zip(reference[r].iter().flatten()) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
    Ok(())
}

fn decoder_is_causal() -> Result<()> {
    for cfg in all_configs() {
        let (model, _) = build(&cfg, 7)?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        let base = vec![vec![BOS, 7, 12, 19, 6]; 3];
        let (tgt, _) = padded(&base, PAD)?;
        let full = model.forward_t(&memory, &tgt, false)?;
        for t in 1..5 {
            let mut changed = base.clone();
            for row in &mut changed {
                row[t] = 25;
            }
            let (tgt2, _) = padded(&changed, PAD)?;
            let out = model.forward_t(&memory, &tgt2, false)?;
            let before = max_abs_diff(&full.narrow(1, 0, t)?, &out.narrow(1, 0, t)?)?;
            assert!(
                before <= 1e-6,
                "changing token {t} changed earlier outputs by {before}"
            );
            let at = max_abs_diff(&full.narrow(1, t, 1)?, &out.narrow(1, t, 1)?)?;
            assert!(
                at > 1e-4,
                "changing token {t} did not change its own output"
            );
        }
    }
    Ok(())
}

fn cached_decoding_equals_full_forward() -> Result<()> {
    for cfg in all_configs() {
        let (model, _) = build(&cfg, 8)?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        let prefix = vec![
            vec![BOS, 7, 12, 19, 6, 3],
            vec![BOS, 22, 10, 4, 4, 9],
            vec![BOS, 5, 6, 7, 8, 9],
        ];
        let (tgt, _) = padded(&prefix, PAD)?;
        let full = model.forward_t(&memory, &tgt, false)?; // (3, 6, V)
        let mut cache = model.start_decoding(&memory)?;
        for t in 0..6 {
            let step =
                model.decode_step(&memory, &tgt.narrow(1, t, 1)?.contiguous()?, &mut cache)?;
            let diff = max_abs_diff(&step, &full.i((.., t))?)?;
            assert!(
                diff <= 1e-5,
                "step {t}: cached logits differ by {diff} ({cfg:?})"
            );
        }
    }
    Ok(())
}

/// The self-attention cache past its first buffer block (32 rows, so it grows) and after
/// reordering mid-sentence (rows dropped and duplicated, as beam search does): every step's
/// logits still equal the full forward of the prefixes the rows now hold.
fn cached_decoding_survives_growth_and_reordering() -> Result<()> {
    const LEN: usize = 45;
    const SWITCH: usize = 20;
    let cfg = tiny_config(NormPosition::Pre, Tying::All);
    let (model, _) = build(&cfg, 9)?;
    let (src, src_mask) = padded(&sources(), PAD)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let prefix: Vec<Vec<u32>> = (0..3u32)
        .map(|r| {
            std::iter::once(BOS)
                .chain((1..LEN as u32).map(|t| 4 + (t * 7 + r * 5) % 24))
                .collect()
        })
        .collect();
    let (tgt, _) = padded(&prefix, PAD)?;
    let full = model.forward_t(&memory, &tgt, false)?; // (3, LEN, V)
    let order = Tensor::new(&[2u32, 0, 0], &device())?;
    // Rows after the switch: 2, 0, 0 of the original batch, continuing their own prefixes.
    let (full_after, tgt_after) = (full.index_select(&order, 0)?, tgt.index_select(&order, 0)?);
    let mut cache = model.start_decoding(&memory)?;
    let mut memory_now = memory.clone();
    for t in 0..LEN {
        if t == SWITCH {
            cache = model.select_cache(&cache, &order)?;
            memory_now = memory_now.index_select(&order)?;
        }
        let (tgt_now, full_now) = if t < SWITCH {
            (&tgt, &full)
        } else {
            (&tgt_after, &full_after)
        };
        let step = model.decode_step(
            &memory_now,
            &tgt_now.narrow(1, t, 1)?.contiguous()?,
            &mut cache,
        )?;
        let diff = max_abs_diff(&step, &full_now.i((.., t))?)?;
        assert!(diff <= 1e-5, "step {t}: cached logits differ by {diff}");
    }
    Ok(())
}

/// The decoding state moved in place as beam search moves it, with hypotheses sharing their
/// sentence's memory row: two rows per sentence from step 3, swapped within each sentence at
/// every later step (the two buffers of the self-attention cache taking turns), the second
/// sentence dropped at step 20, the cache grown past its first block after all that. Every
/// step's logits equal the full forward of the tokens each row has fed.
fn cached_decoding_survives_moves_in_place() -> Result<()> {
    const LEN: usize = 40;
    let (model, _) = build(&tiny_config(NormPosition::Pre, Tying::All), 10)?;
    assert!(model.beams_share_memory());
    let (src, src_mask) = padded(&sources(), PAD)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let mut cache = model.start_decoding(&memory)?;
    let mut memory_now = memory.clone();
    // Per row: its sentence (a row of `memory`) and the tokens it has fed.
    let mut rows: Vec<(u32, Vec<u32>)> = (0..3).map(|s| (s, Vec::new())).collect();
    let ids = |v: &[u32]| Tensor::new(v, &device());
    for t in 0..LEN {
        let (index, sources): (Vec<u32>, Option<Vec<u32>>) = match t {
            0..3 => (Vec::new(), None),
            3 => ((0..3).flat_map(|r| [r, r]).collect(), None),
            20 => {
                let keep = (0..rows.len() as u32).filter(|&r| rows[r as usize].0 != 1);
                (keep.collect(), Some(vec![0, 2]))
            }
            _ => ((0..rows.len() as u32).map(|r| r ^ 1).collect(), None),
        };
        if !index.is_empty() {
            let sources = sources.map(|s| ids(&s)).transpose()?;
            if let Some(s) = &sources {
                memory_now = memory_now.index_select(s)?;
            }
            model.move_cache(&mut cache, &ids(&index)?, sources.as_ref())?;
            rows = index.iter().map(|&r| rows[r as usize].clone()).collect();
        }
        let fed: Vec<u32> = (0..rows.len())
            .map(|r| {
                if t == 0 {
                    BOS
                } else {
                    4 + ((t * 7 + r * 5) % 24) as u32
                }
            })
            .collect();
        let tokens = ids(&fed)?.reshape((fed.len(), 1))?;
        let step = model.decode_step(&memory_now, &tokens, &mut cache)?;
        for (r, (sentence, history)) in rows.iter_mut().enumerate() {
            history.push(fed[r]);
            let one = memory.index_select(&ids(&[*sentence])?)?;
            let full = model.forward_t(&one, &ids(history.as_slice())?.unsqueeze(0)?, false)?;
            let diff = max_abs_diff(&step.i(r)?, &full.i((0, t))?)?;
            assert!(
                diff <= 1e-5,
                "step {t}, row {r}: cached logits differ by {diff}"
            );
        }
    }
    assert_eq!(rows.len(), 4);
    Ok(())
}

fn greedy_matches_argmax_of_full_forward() -> Result<()> {
    let (model, _) = build(&tiny_config(NormPosition::Post, Tying::All), 9)?;
    let (src, src_mask) = padded(&sources(), PAD)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let ids = SpecialIds { bos: BOS, eos: EOS };
    let out = greedy(&model, &memory, ids, &[6, 6, 6])?;
    // Re-derive each hypothesis by repeated full (uncached) forwards of one sentence.
    for (r, hyp) in out.iter().enumerate() {
        let one = memory.index_select(&Tensor::new(&[r as u32], &device())?)?;
        let mut prefix = vec![BOS];
        let mut expected = Vec::new();
        for _ in 0..6 {
            let t = Tensor::new(prefix.as_slice(), &device())?.unsqueeze(0)?;
            let logits = model.forward_t(&one, &t, false)?;
            let next = logits
                .i((0, prefix.len() - 1))?
                .argmax(0)?
                .to_scalar::<u32>()?;
            if next == EOS {
                break;
            }
            expected.push(next);
            prefix.push(next);
        }
        assert_eq!(hyp, &expected, "row {r}");
    }
    Ok(())
}

fn dropout_is_seeded_and_off_in_eval() -> Result<()> {
    let cfg = tiny_config(NormPosition::Post, Tying::All);
    let (src, src_mask) = padded(&sources(), PAD)?;
    let (tgt, _) = padded(&targets_in(), PAD)?;
    let run = |seed| -> Result<(Tensor, Tensor, Tensor)> {
        let (model, _) = build(&cfg, seed)?;
        let memory = model.encode(&src, &src_mask, true)?;
        let a = model.forward_t(&memory, &tgt, true)?;
        let b = model.forward_t(&memory, &tgt, true)?;
        let m = model.encode(&src, &src_mask, false)?;
        Ok((a, b, model.forward_t(&m, &tgt, false)?))
    };
    let (a1, b1, e1) = run(10)?;
    let (a2, _, e2) = run(10)?;
    assert_eq!(
        max_abs_diff(&a1, &a2)?,
        0.0,
        "same seed, different dropout masks"
    );
    assert!(
        max_abs_diff(&a1, &b1)? > 1e-3,
        "two training passes drew the same masks"
    );
    assert_eq!(max_abs_diff(&e1, &e2)?, 0.0);
    Ok(())
}

fn initialisation_is_seeded() -> Result<()> {
    let cfg = tiny_config(NormPosition::Post, Tying::None);
    let (_, s1) = build(&cfg, 11)?;
    let (_, s2) = build(&cfg, 11)?;
    let (_, s3) = build(&cfg, 12)?;
    let (t1, t2, t3) = (s1.tensors(), s2.tensors(), s3.tensors());
    assert_eq!(t1.len(), t2.len());
    for (name, a) in &t1 {
        assert_eq!(max_abs_diff(a, &t2[name])?, 0.0, "{name}");
    }
    let w = "encoder.layers.0.ffn.fc1.weight";
    assert!(max_abs_diff(&t1[w], &t3[w])? > 0.0);
    Ok(())
}

fn every_parameter_gets_a_gradient() -> Result<()> {
    // candle-nn 0.11's fused softmax and LayerNorm have no backward; a model built on them
    // trains only part of its parameters while its loss still falls.
    for cfg in all_configs() {
        let (model, store) = build(&cfg, 13)?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, true)?;
        let loss = model.forward_t(&memory, &tgt, true)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name} ({cfg:?})"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }
    Ok(())
}

fn rejects_bad_config() -> Result<()> {
    let mut cfg = tiny_config(NormPosition::Post, Tying::All);
    cfg.n_heads = 5;
    let err = build(&cfg, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("divisible"), "{err}");
    Ok(())
}

on_both_paths!(
    output_shapes,
    cross_attention_rows_sum_to_one_and_skip_padding,
    padding_content_does_not_change_real_outputs,
    extra_padding_columns_do_not_change_outputs,
    decoder_is_causal,
    cached_decoding_equals_full_forward,
    cached_decoding_survives_growth_and_reordering,
    cached_decoding_survives_moves_in_place,
    greedy_matches_argmax_of_full_forward,
    dropout_is_seeded_and_off_in_eval,
    initialisation_is_seeded,
    every_parameter_gets_a_gradient,
    rejects_bad_config,
);
