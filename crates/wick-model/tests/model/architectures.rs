//! The RNN encoder-decoders (`arch = "rnn"`: every cell × attention × input-feeding setting)
//! and ConvS2S (`arch = "conv"`) keep the invariants the Transformer keeps (padding,
//! causality, cache = full recompute, beam 1 = greedy, batch independence, gradients
//! everywhere, seeded dropout) and learn; each on the kernel path and on the forced reference
//! path. The invariants run on `Model`, as the trainer and search see any architecture.
//!
//! Longer than most files: one list of configurations serves every invariant, and splitting
//! the invariants across files would split that list.

use crate::common::*;
use candle_core::{D, DType, IndexOp, Result, Tensor};
use candle_nn::Optimizer;
use wick_model::conv::ConvConfig;
use wick_model::rnn::{AttentionKind, Cell, RnnConfig};
use wick_model::search::{BeamConfig, SpecialIds, beam_search, greedy};
use wick_model::transformer::Tying;
use wick_model::{ArchConfig, DataShape, DropoutRng, Model, ParamStore, Seq2Seq};

const ATTENTIONS: [AttentionKind; 4] = [
    AttentionKind::Bahdanau,
    AttentionKind::LuongDot,
    AttentionKind::LuongGeneral,
    AttentionKind::LuongConcat,
];

fn tiny(cell: Cell, attention: AttentionKind, input_feeding: bool) -> RnnConfig {
    RnnConfig {
        cell,
        attention,
        embedding_dim: 12,
        hidden_size: 16,
        encoder_layers: 2,
        decoder_layers: 2,
        input_feeding,
        conditional: false,
        bridge: true,
        dropout: 0.1,
        context_dropout: 0.1,
        tie_embeddings: Tying::Decoder,
    }
}

/// Both cells × the four attentions, Luong's with and without input feeding, the other
/// tyings, one layer and no bridge once each.
fn rnn_configs() -> Vec<RnnConfig> {
    let mut out = Vec::new();
    for cell in [Cell::Gru, Cell::Lstm] {
        for attention in ATTENTIONS {
            out.push(tiny(cell, attention, true));
            if attention.is_luong() {
                out.push(tiny(cell, attention, false));
            }
        }
    }
    out.push(RnnConfig {
        tie_embeddings: Tying::None,
        encoder_layers: 1,
        decoder_layers: 1,
        bridge: false,
        ..tiny(Cell::Lstm, AttentionKind::LuongGeneral, true)
    });
    out.push(RnnConfig {
        tie_embeddings: Tying::All,
        ..tiny(Cell::Gru, AttentionKind::Bahdanau, true)
    });
    for cell in [Cell::Gru, Cell::Lstm] {
        out.push(RnnConfig {
            conditional: true,
            ..tiny(cell, AttentionKind::Bahdanau, true)
        });
    }
    out
}

fn tiny_conv(kernel_size: usize, tie_embeddings: Tying) -> ConvConfig {
    ConvConfig {
        embedding_dim: 12,
        hidden_size: 16,
        encoder_layers: 2,
        decoder_layers: 2,
        kernel_size,
        dropout: 0.1,
        max_positions: 64,
        tie_embeddings,
    }
}

fn conv_configs() -> Vec<ConvConfig> {
    vec![
        tiny_conv(3, Tying::Decoder),
        tiny_conv(5, Tying::None),
        tiny_conv(1, Tying::All),
    ]
}

/// Every RNN and ConvS2S configuration the invariants run over, with a name for messages.
fn all_models(seed: u64) -> Result<Vec<(String, Model, ParamStore)>> {
    let mut out = Vec::new();
    for cfg in rnn_configs() {
        let (m, store) = build_arch(&cfg, seed)?;
        out.push((format!("{cfg:?}"), m, store));
    }
    for cfg in conv_configs() {
        let (m, store) = build_arch(&cfg, seed)?;
        out.push((format!("{cfg:?}"), m, store));
    }
    Ok(out)
}

fn build_arch<C: ArchConfig>(cfg: &C, seed: u64) -> Result<(Model, ParamStore)> {
    let store = ParamStore::new(seed);
    let model = cfg.build(
        VOCAB,
        DropoutRng::new(seed + 1),
        store.var_builder(DType::F32, &device()),
    )?;
    Ok((Model::new(C::NAME, model), store))
}

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

/// Logits at the real target positions of each row, computed with the rows batched and
/// padded with the given fills.
fn real_logits(model: &Model, src_fill: u32, tgt_fill: u32) -> Result<Vec<Vec<Vec<f32>>>> {
    let (src, src_mask) = padded(&sources(), src_fill)?;
    let (tgt_in, _) = padded(&targets_in(), tgt_fill)?;
    let memory = model.encode(&src, &src_mask, false)?;
    let logits = model.forward_t(&memory, &tgt_in, false)?;
    targets_in()
        .iter()
        .enumerate()
        .map(|(r, row)| logits.i((r, ..row.len()))?.to_vec2::<f32>())
        .collect()
}

fn assert_close(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>], tol: f32, what: &str) {
    for (x, y) in a
        .iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
    {
        assert!((x - y).abs() <= tol, "{what}: {x} vs {y}");
    }
}

fn output_shapes() -> Result<()> {
    for (cfg, model, _) in all_models(3)? {
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        assert_eq!(memory.states.dims()[..2], [3, 7]);
        assert_eq!(
            model.decoder_states(&memory, &tgt_in, true)?.dims(),
            &[3, 5, 12]
        );
        assert_eq!(
            model.forward_t(&memory, &tgt_in, false)?.dims(),
            &[3, 5, VOCAB.tgt]
        );
        let attn = model.attention(&memory, &tgt_in)?;
        // The RNN's one alignment matrix; one per ConvS2S decoder layer.
        let layers = if model.arch() == "conv" { 2 } else { 1 };
        assert_eq!(attn.len(), layers, "{cfg}");
        for a in &attn {
            assert_eq!(a.dims(), &[3, 1, 5, 7]);
        }
        let mut cache = model.start_decoding(&memory)?;
        let step =
            model.decode_step(&memory, &Tensor::full(BOS, (3, 1), &device())?, &mut cache)?;
        assert_eq!(step.dims(), &[3, VOCAB.tgt]);
    }
    Ok(())
}

fn attention_rows_sum_to_one_and_skip_padding() -> Result<()> {
    for (cfg, model, _) in all_models(4)? {
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        for probs in model.attention(&memory, &tgt_in)? {
            let sums = probs.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
            let on_pad = probs
                .i((2, .., .., 2..))?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert_eq!(on_pad, 0.0, "{cfg} attends to padding");
        }
    }
    Ok(())
}

/// What fills the padding, and how much padding there is, changes no real output: the
/// masked recurrence keeps its state over padded positions in both directions.
fn padding_does_not_change_real_outputs() -> Result<()> {
    for (cfg, model, _) in all_models(5)? {
        let reference = real_logits(&model, PAD, PAD)?;
        for (src_fill, tgt_fill) in [(17, PAD), (PAD, 23), (3, 11)] {
            let other = real_logits(&model, src_fill, tgt_fill)?;
            assert_close(&reference, &other, 1e-5, &format!("{cfg:?}"));
        }
        // Three more padded columns.
        let mut longer = sources();
        longer[0].extend([PAD, PAD, PAD]);
        let (src, src_mask) = padded(&longer, PAD)?;
        let mut m = src_mask.to_vec2::<f32>()?;
        m[0][7..].fill(0.0);
        let src_mask = Tensor::new(m, &device())?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        let logits = model.forward_t(&memory, &tgt_in, false)?;
        for (r, row) in targets_in().iter().enumerate() {
            let got = vec![logits.i((r, ..row.len()))?.to_vec2::<f32>()?];
            assert_close(&got, &reference[r..=r], 1e-5, "extra padding");
        }
    }
    Ok(())
}

/// A sentence decoded alone gives what it gives in a batch.
fn batch_independence() -> Result<()> {
    for (_, model, _) in all_models(6)? {
        let batched = real_logits(&model, PAD, PAD)?;
        for (r, (src_row, tgt_row)) in sources().iter().zip(targets_in()).enumerate() {
            let (src, src_mask) = padded(std::slice::from_ref(src_row), PAD)?;
            let (tgt, _) = padded(&[tgt_row], PAD)?;
            let memory = model.encode(&src, &src_mask, false)?;
            let alone = model
                .forward_t(&memory, &tgt, false)?
                .i(0)?
                .to_vec2::<f32>()?;
            assert_close(&[alone], &batched[r..=r], 1e-5, "alone vs batched");
        }
    }
    Ok(())
}

fn decoder_is_causal() -> Result<()> {
    for (cfg, model, _) in all_models(7)? {
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
                "token {t} changed earlier outputs by {before}"
            );
            let at = max_abs_diff(&full.narrow(1, t, 1)?, &out.narrow(1, t, 1)?)?;
            assert!(
                at > 1e-5,
                "token {t} did not change its own output ({cfg:?})"
            );
        }
    }
    Ok(())
}

/// Step-by-step decoding with the recurrent state equals the teacher-forced recompute, also
/// after the rows are reordered, dropped and repeated mid-sentence as beam search does, and on
/// the copy laid out for decoding.
fn cached_decoding_equals_full_forward() -> Result<()> {
    for (cfg, trained, _) in all_models(8)? {
        let decoding = trained.for_decoding()?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let prefix = vec![
            vec![BOS, 7, 12, 19, 6, 3],
            vec![BOS, 22, 10, 4, 4, 9],
            vec![BOS, 5, 6, 7, 8, 9],
        ];
        let (tgt, _) = padded(&prefix, PAD)?;
        let memory = trained.encode(&src, &src_mask, false)?;
        let full = trained.forward_t(&memory, &tgt, false)?; // (3, 6, V)
        for model in [&trained, &decoding] {
            let memory = model.encode(&src, &src_mask, false)?;
            let mut cache = model.start_decoding(&memory)?;
            for t in 0..3 {
                let step =
                    model.decode_step(&memory, &tgt.narrow(1, t, 1)?.contiguous()?, &mut cache)?;
                let diff = max_abs_diff(&step, &full.i((.., t))?)?;
                assert!(diff <= 1e-5, "step {t}: differs by {diff} ({cfg:?})");
            }
            // Rows 2, 0, 0 from here on: their prefixes and sources move with them.
            let order = Tensor::new(&[2u32, 0, 0], &device())?;
            let mut cache = model.select_cache(&cache, &order)?;
            let memory = memory.index_select(&order)?;
            let tgt = tgt.index_select(&order, 0)?;
            let full = full.index_select(&order, 0)?;
            for t in 3..6 {
                let step =
                    model.decode_step(&memory, &tgt.narrow(1, t, 1)?.contiguous()?, &mut cache)?;
                let diff = max_abs_diff(&step, &full.i((.., t))?)?;
                assert!(diff <= 1e-5, "step {t} after reordering: {diff} ({cfg:?})");
            }
        }
    }
    Ok(())
}

/// A decoding copy of a model over trainable variables encodes to a memory that records no
/// ops, whatever the architecture: a memory that did would keep every activation of the
/// encoder alive for as long as the batch decodes. The model itself records them (so that
/// the check can fail).
fn decoding_copies_keep_no_encoder_graph() -> Result<()> {
    let (src, src_mask) = padded(&sources(), 0)?;
    let mut models = all_models(3)?;
    let (transformer, store) = build(
        &tiny_config(wick_model::transformer::NormPosition::Pre, Tying::All),
        3,
    )?;
    models.push((
        "transformer".into(),
        Model::new("transformer", transformer),
        store,
    ));
    for (name, model, _store) in &models {
        let trained = model.encode(&src, &src_mask, false)?;
        assert!(
            trained.states.track_op(),
            "{name}: the model records no ops"
        );
        let memory = model.for_decoding()?.encode(&src, &src_mask, false)?;
        let tracked = std::iter::once(&memory.states)
            .chain(&memory.extra)
            .any(Tensor::track_op);
        assert!(!tracked, "{name}: a decoding copy's memory records ops");
        assert!(max_diff(&memory.states, &trained.states)? < 1e-5, "{name}");
    }
    Ok(())
}

fn beam_one_equals_greedy() -> Result<()> {
    let ids = SpecialIds { bos: BOS, eos: EOS };
    for (cfg, model, _) in all_models(9)? {
        let model = model.for_decoding()?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let memory = model.encode(&src, &src_mask, false)?;
        let max_len = [12, 12, 12];
        let greedy_out = greedy(&model, &memory, ids, &max_len)?;
        let beam = beam_search(
            &model,
            &memory,
            ids,
            &max_len,
            BeamConfig {
                beam: 1,
                length_penalty: 0.0,
                n_best: 1,
            },
        )?;
        let beam_out: Vec<Vec<u32>> = beam.into_iter().map(|h| h[0].tokens.clone()).collect();
        assert_eq!(greedy_out, beam_out, "{cfg:?}");
    }
    Ok(())
}

fn every_parameter_gets_a_gradient() -> Result<()> {
    for (cfg, model, store) in all_models(10)? {
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let memory = model.encode(&src, &src_mask, true)?;
        let logits = model.forward_t(&memory, &tgt_in, true)?;
        let loss = (logits.sqr()?.mean_all()? + logits.mean_all()?)?;
        let grads = loss.backward()?;
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient ({cfg:?})"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }
    Ok(())
}

fn dropout_is_seeded_and_off_in_eval() -> Result<()> {
    let rnn = RnnConfig {
        dropout: 0.3,
        ..tiny(Cell::Lstm, AttentionKind::Bahdanau, true)
    };
    // Context dropout alone: the encoder states are the only thing dropped.
    let rnn_context = RnnConfig {
        dropout: 0.0,
        context_dropout: 0.3,
        ..tiny(Cell::Gru, AttentionKind::LuongGeneral, true)
    };
    let conv = ConvConfig {
        dropout: 0.3,
        ..tiny_conv(3, Tying::Decoder)
    };
    let build = |which: usize, seed: u64| -> Result<Model> {
        Ok(match which {
            0 => build_arch(&rnn, seed)?.0,
            1 => build_arch(&rnn_context, seed)?.0,
            _ => build_arch(&conv, seed)?.0,
        })
    };
    let (src, src_mask) = padded(&sources(), PAD)?;
    let (tgt_in, _) = padded(&targets_in(), PAD)?;
    for which in [0, 1, 2] {
        let run = |train: bool, seed: u64| -> Result<Tensor> {
            let model = build(which, seed)?;
            let memory = model.encode(&src, &src_mask, train)?;
            model.forward_t(&memory, &tgt_in, train)
        };
        assert_eq!(max_abs_diff(&run(true, 11)?, &run(true, 11)?)?, 0.0);
        let model = build(which, 11)?;
        let memory = model.encode(&src, &src_mask, false)?;
        let eval_a = model.forward_t(&memory, &tgt_in, false)?;
        let eval_b = model.forward_t(&memory, &tgt_in, false)?;
        assert_eq!(max_abs_diff(&eval_a, &eval_b)?, 0.0);
        assert!(
            max_abs_diff(&eval_a, &run(true, 11)?)? > 1e-4,
            "dropout did nothing"
        );
    }
    Ok(())
}

/// Orthogonal recurrent blocks, a forget-gate bias of 1, the same weights for the same seed.
fn rnn_initialisation() -> Result<()> {
    for cell in [Cell::Gru, Cell::Lstm] {
        let cfg = tiny(cell, AttentionKind::LuongDot, true);
        let (_, a) = build_arch(&cfg, 12)?;
        let (_, b) = build_arch(&cfg, 12)?;
        for ((name, va), (_, vb)) in a.vars().iter().zip(b.vars()) {
            assert_eq!(max_abs_diff(va.as_tensor(), vb.as_tensor())?, 0.0, "{name}");
        }
        let params = a.tensors();
        for (name, w) in &params {
            if name.ends_with("weight_hh") {
                let h = w.dim(1)?;
                for g in 0..cell.gates() {
                    let block = w.narrow(0, g * h, h)?;
                    let gram = block.matmul(&block.t()?)?;
                    let eye = Tensor::eye(h, DType::F32, gram.device())?;
                    let err = max_abs_diff(&gram, &eye)?;
                    assert!(err < 1e-5, "{name} block {g} is not orthogonal: {err}");
                }
            }
            if name.ends_with("bias_ih") {
                let h = params[&name.replace("bias_ih", "weight_hh")].dim(1)?;
                let v = w.to_vec1::<f32>()?;
                let forget = &v[h..2 * h];
                let want = if cell == Cell::Lstm { 1.0 } else { 0.0 };
                assert!(forget.iter().all(|&x| x == want), "{name}: {forget:?}");
            }
        }
    }
    Ok(())
}

/// Adam on one batch drives the loss near zero: the gradients are the loss's.
fn overfits_one_batch() -> Result<()> {
    let models = [
        build_arch(
            &RnnConfig {
                dropout: 0.0,
                ..tiny(Cell::Gru, AttentionKind::Bahdanau, true)
            },
            13,
        )?,
        build_arch(
            &RnnConfig {
                dropout: 0.0,
                ..tiny(Cell::Lstm, AttentionKind::LuongGeneral, true)
            },
            13,
        )?,
        build_arch(
            &ConvConfig {
                dropout: 0.0,
                ..tiny_conv(3, Tying::Decoder)
            },
            13,
        )?,
    ];
    for (model, store) in models {
        let vars: Vec<_> = store.vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = candle_nn::AdamW::new(
            vars,
            candle_nn::ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let (src, src_mask) = padded(&sources(), PAD)?;
        let (tgt_in, _) = padded(&targets_in(), PAD)?;
        let gold: Vec<Vec<u32>> = targets_in()
            .iter()
            .map(|r| r[1..].iter().copied().chain([EOS]).collect())
            .collect();
        let (tgt_out, tgt_mask) = padded(&gold, PAD)?;
        let mut last = f32::INFINITY;
        for _ in 0..150 {
            let memory = model.encode(&src, &src_mask, true)?;
            let logits = model.forward_t(&memory, &tgt_in, true)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let picked = logp.gather(&tgt_out.unsqueeze(2)?, 2)?.squeeze(2)?;
            let loss = ((picked * &tgt_mask)?.sum_all()?
                / tgt_mask.sum_all()?.to_scalar::<f32>()? as f64)?
                .neg()?;
            last = loss.to_scalar::<f32>()?;
            opt.backward_step(&loss)?;
        }
        assert!(last < 0.05, "{model:?}: loss {last} after 150 steps");
    }
    Ok(())
}

fn rejects_bad_configs() -> Result<()> {
    let base = RnnConfig::default();
    let check = |cfg: RnnConfig, key: &str| {
        let err = cfg.validate(&DataShape::default()).unwrap_err();
        assert_eq!(err.key, key, "{err}");
    };
    check(
        RnnConfig {
            hidden_size: 15,
            ..base.clone()
        },
        "hidden_size",
    );
    check(
        RnnConfig {
            embedding_dim: 0,
            ..base.clone()
        },
        "embedding_dim",
    );
    check(
        RnnConfig {
            encoder_layers: 0,
            ..base.clone()
        },
        "encoder_layers",
    );
    check(
        RnnConfig {
            decoder_layers: 0,
            ..base.clone()
        },
        "decoder_layers",
    );
    check(
        RnnConfig {
            dropout: 1.0,
            ..base.clone()
        },
        "dropout",
    );
    check(
        RnnConfig {
            context_dropout: -0.5,
            ..base.clone()
        },
        "context_dropout",
    );
    check(
        RnnConfig {
            attention: AttentionKind::LuongGeneral,
            conditional: true,
            ..base.clone()
        },
        "conditional",
    );
    check(
        RnnConfig {
            tie_embeddings: Tying::All,
            ..base.clone()
        },
        "tie_embeddings",
    );
    let conv = ConvConfig::default();
    let check = |cfg: ConvConfig, key: &str| {
        let err = cfg.validate(&DataShape::default()).unwrap_err();
        assert_eq!(err.key, key, "{err}");
    };
    check(
        ConvConfig {
            kernel_size: 4,
            ..conv.clone()
        },
        "kernel_size",
    );
    check(
        ConvConfig {
            hidden_size: 0,
            ..conv.clone()
        },
        "hidden_size",
    );
    check(
        ConvConfig {
            max_positions: 1,
            ..conv.clone()
        },
        "max_positions",
    );
    check(
        ConvConfig {
            dropout: -0.1,
            ..conv.clone()
        },
        "dropout",
    );
    let data = DataShape {
        max_len: Some(100),
        ..DataShape::default()
    };
    let err = ConvConfig {
        max_positions: 64,
        ..conv
    }
    .validate(&data)
    .unwrap_err();
    assert_eq!(err.key, "max_positions");
    Ok(())
}

/// Weight normalisation starts at the drawn weights: `g = ‖v‖` row by row.
fn conv_weight_norm_starts_at_the_drawn_weights() -> Result<()> {
    let (_, store) = build_arch(&tiny_conv(3, Tying::None), 14)?;
    let params = store.tensors();
    let mut seen = 0;
    for (name, g) in &params {
        if let Some(prefix) = name.strip_suffix("weight_g") {
            let v = &params[&format!("{prefix}weight_v")];
            let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
            assert!(max_abs_diff(g, &norm)? < 1e-6, "{name}");
            seen += 1;
        }
    }
    // fc_in, fc_out of both sides, 2 + 2 convolutions, 2 × 2 attention projections, output.
    assert_eq!(seen, 13);
    Ok(())
}

on_both_paths!(
    output_shapes,
    attention_rows_sum_to_one_and_skip_padding,
    padding_does_not_change_real_outputs,
    batch_independence,
    decoder_is_causal,
    cached_decoding_equals_full_forward,
    beam_one_equals_greedy,
    decoding_copies_keep_no_encoder_graph,
    every_parameter_gets_a_gradient,
    dropout_is_seeded_and_off_in_eval,
    rnn_initialisation,
    overfits_one_batch,
    rejects_bad_configs,
    conv_weight_norm_starts_at_the_drawn_weights,
);
