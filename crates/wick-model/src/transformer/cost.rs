//! What a Transformer training step costs in products (`wick bench train|matmul`).

use super::config::TransformerConfig;
use crate::model::{ProductShape, StepCost};

/// Multiply-add FLOPs of one forward pass on `b` sentences of `s` source and `t` target
/// tokens: every projection, the attention products and the output projection (backward is
/// counted as twice this).
fn forward_flops(cfg: &TransformerConfig, vocab: usize, b: usize, s: usize, t: usize) -> f64 {
    let (d, ff) = (cfg.d_model as f64, cfg.d_ff as f64);
    let (b, s, t, v) = (b as f64, s as f64, t as f64, vocab as f64);
    let enc = 2.0 * b * s * (4.0 * d * d + 2.0 * d * ff) + 4.0 * b * s * s * d;
    let dec = 2.0 * b * t * (4.0 * d * d + 2.0 * d * d + 2.0 * d * ff)
        + 2.0 * b * s * 2.0 * d * d
        + 4.0 * b * t * t * d
        + 4.0 * b * t * s * d;
    cfg.encoder_layers as f64 * enc + cfg.decoder_layers as f64 * dec + 2.0 * b * t * d * v
}

/// The products of the step's linear layers and output projection (forward `x·Wᵀ`; backward
/// `dY·W` and `dYᵀ·x`). The attention core's products are left out: they run inside the
/// attention kernel.
fn step_products(
    cfg: &TransformerConfig,
    vocab: usize,
    b: usize,
    s: usize,
    t: usize,
) -> Vec<ProductShape> {
    let (d, ff) = (cfg.d_model, cfg.d_ff);
    let (enc, dec) = (cfg.encoder_layers, cfg.decoder_layers);
    let (ns, nt) = (b * s, b * t);
    let mut out = Vec::new();
    let mut linear = |name: &str, rows: usize, d_in: usize, d_out: usize, count: usize| {
        if count == 0 {
            return;
        }
        let shape = |suffix: &str, pass, (m, k, n), (lhs_t, rhs_t)| ProductShape {
            name: format!("{name}{suffix}"),
            pass,
            m,
            k,
            n,
            lhs_t,
            rhs_t,
            count,
        };
        out.push(shape("", "forward", (rows, d_in, d_out), (false, true)));
        out.push(shape(
            " dX",
            "backward",
            (rows, d_out, d_in),
            (false, false),
        ));
        out.push(shape(" dW", "backward", (d_out, rows, d_in), (true, false)));
    };
    linear("encoder qkv", ns, d, 3 * d, enc);
    linear("encoder out", ns, d, d, enc);
    linear("encoder fc1", ns, d, ff, enc);
    linear("encoder fc2", ns, ff, d, enc);
    linear("decoder qkv", nt, d, 3 * d, dec);
    linear("decoder out", nt, d, d, 2 * dec);
    linear("decoder q", nt, d, d, dec);
    linear("decoder memory kv", ns, d, 2 * d, dec);
    linear("decoder fc1", nt, d, ff, dec);
    linear("decoder fc2", nt, ff, d, dec);
    linear("output projection", nt, d, vocab, 1);
    out
}

pub(super) fn step_cost(
    cfg: &TransformerConfig,
    vocab: usize,
    b: usize,
    s: usize,
    t: usize,
) -> StepCost {
    StepCost {
        forward_flops: forward_flops(cfg, vocab, b, s, t),
        products: step_products(cfg, vocab, b, s, t),
    }
}
