//! The attention core of one sentence, forward and backward, head by head.

use multiversion::multiversion;
use multiversion::target::selected_target;

use super::tiles::{Strided, dot, dot8, small_product};
use super::{Bias, Geometry};
use crate::simd::{fast_exp, lane_max, lane_sum};

/// Columns `col..col + dk` of `rows` `(t, stride)`, transposed into `out` `(dk, tp)`, with
/// columns `t..tp` zero (padding to a whole number of vectors).
#[inline(always)]
fn transpose_head(
    out: &mut [f32],
    rows: &[f32],
    t: usize,
    stride: usize,
    col: usize,
    dk: usize,
    tp: usize,
) {
    for d in 0..dk {
        let o = &mut out[d * tp..][..tp];
        for (j, o) in o[..t].iter_mut().enumerate() {
            *o = rows[j * stride + col + d];
        }
        o[t..].fill(0.0);
    }
}

/// Attention probabilities of head `h` of one sentence into `s.p` `(tq, tp)`, `tp` = `tk`
/// rounded up to 8 (columns `tk..tp` zero), from the sentence's rows `q` and `kv`; `s.kt`
/// holds the head's keys transposed.
#[inline(always)]
fn probs_block<const FMA: bool>(
    g: &Geometry,
    q: &[f32],
    kv: &[f32],
    bias: &Bias,
    sentence: usize,
    h: usize,
    s: &mut Scratch,
) {
    let (tq, tk, dk) = (g.tq, g.tk, g.dk);
    let tp = tk.next_multiple_of(8);
    transpose_head(&mut s.kt, kv, tk, g.kvw, g.k_col + h * dk, dk, tp);
    let q = Strided::new(q, g.qw).at(0, g.q_col + h * dk);
    small_product::<FMA>((tq, tp, dk), q, Strided::new(&s.kt, tp), &mut s.p, tp);
    for i in 0..tq {
        let row = &mut s.p[i * tp..][..tp];
        for (x, b) in row.iter_mut().zip(bias.row(sentence, i)) {
            *x = g.scale * *x + b;
        }
        softmax_in_place(&mut row[..tk]);
        row[tk..].fill(0.0);
    }
}

/// Scores → probabilities, in place.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    // Eight lanes for the max and the sum, so that all three passes vectorise.
    let max = lane_max(row);
    for s in row.iter_mut() {
        *s = fast_exp(*s - max);
    }
    let inv = 1.0 / lane_sum(row);
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// Queries per sentence up to which, without dropout, [`forward_sentence`] runs queries
/// against a memory one at a time through [`forward_one_query`]: in beam search a sentence's
/// hypotheses attend to its memory as the queries of one call (the memory is held once per
/// sentence, not once per hypothesis), and each gets the bits it would get as a query of its
/// own, so that a hypothesis does not depend on how many share its sentence (beam widths up
/// to 16). Self-attention keeps its blocked product for any length above 1.
pub(super) const QUERIES_ONE_BY_ONE: usize = 16;

/// [`forward_sentence`] for query `query` without dropout (a decoding step). The scores go
/// eight keys at a time ([`dot8`]) with the heads inside the loop over key blocks, so that a
/// block's rows, all heads, are read from L1 once loaded: head by head, the loop went through
/// the key/value cache a cache line or two per key and head, and its misses made attention
/// 14% of a greedy decoding step (small preset, perf). Each head's output is then the
/// `(1, tk) · (tk, d_k)` product of its probabilities and values, sums in registers
/// ([`small_product`]); row updates through memory (`y += p·v` per key and head) and a
/// horizontal sum per score had made the kernel 8.8% of a one-thread greedy step of the
/// base preset. `p` holds `(heads, tk)` probabilities.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_one_query<const FMA: bool>(
    g: &Geometry,
    q: &[f32],
    kv: &[f32],
    bias: &Bias,
    sentence: usize,
    query: usize,
    out: &mut [f32],
    p: &mut [f32],
) {
    let (tk, dk, d) = (g.tk, g.dk, g.d());
    let brow = bias.row(sentence, query);
    let q = &q[query * g.qw + g.q_col..][..d];
    let out = &mut out[query * d..][..d];
    let mut j = 0;
    while j + 8 <= tk {
        let keys = &kv[j * g.kvw + g.k_col..];
        for h in 0..g.heads {
            let s = dot8::<FMA>(&q[h * dk..][..dk], &keys[h * dk..], g.kvw);
            for (i, s) in s.iter().enumerate() {
                p[h * tk + j + i] = g.scale * s + brow[j + i];
            }
        }
        j += 8;
    }
    for j in j..tk {
        let k = &kv[j * g.kvw + g.k_col..][..d];
        for h in 0..g.heads {
            let s = dot::<FMA>(&q[h * dk..][..dk], &k[h * dk..][..dk]);
            p[h * tk + j] = g.scale * s + brow[j];
        }
    }
    for row in p[..g.heads * tk].chunks_exact_mut(tk) {
        softmax_in_place(row);
    }
    for h in 0..g.heads {
        small_product::<FMA>(
            (1, dk, tk),
            Strided::new(&p[h * tk..][..tk], tk),
            Strided::new(kv, g.kvw).at(0, g.v_col + h * dk),
            &mut out[h * dk..],
            d,
        );
    }
}

/// Output rows `(tq, d)` of one sentence, heads merged; `mask` is the sentence's attention
/// dropout mask `(h, tq, tk)` (`0` or `1/(1-p)`), applied to the probabilities.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn forward_sentence(
    g: &Geometry,
    q: &[f32],
    kv: &[f32],
    bias: &Bias,
    sentence: usize,
    mask: Option<&[f32]>,
    out: &mut [f32],
    s: &mut Scratch,
) {
    const FMA: bool = selected_target!().supports_feature_str("fma");
    let (tq, tk, dk, d) = (g.tq, g.tk, g.dk, g.d());
    if tq <= g.one_by_one && mask.is_none() {
        s.p.resize(g.heads * tk, 0.0);
        for query in 0..tq {
            forward_one_query::<FMA>(g, q, kv, bias, sentence, query, out, &mut s.p);
        }
        return;
    }
    let tp = tk.next_multiple_of(8);
    s.p.resize(tq * tp, 0.0);
    s.kt.resize(dk * tp, 0.0);
    for h in 0..g.heads {
        probs_block::<FMA>(g, q, kv, bias, sentence, h, s);
        if let Some(m) = mask {
            let m = &m[h * tq * tk..][..tq * tk];
            for (p, m) in s.p.chunks_exact_mut(tp).zip(m.chunks_exact(tk)) {
                for (p, m) in p.iter_mut().zip(m) {
                    *p *= m;
                }
            }
        }
        let v = Strided::new(kv, g.kvw).at(0, g.v_col + h * dk);
        small_product::<FMA>(
            (tq, dk, tk),
            Strided::new(&s.p, tp),
            v,
            &mut out[h * dk..],
            d,
        );
    }
}

/// Per-thread scratch of the kernels: probabilities `p` and their gradient `dp` `(tq, tp)`,
/// one head's keys or values transposed `kt` `(dk, tp)`, a transposed `(tk, tq)` block `t`,
/// and one sentence's gradients of Q `(tq, d)`, K and V `(tk, d)`.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) p: Vec<f32>,
    pub(super) dp: Vec<f32>,
    pub(super) kt: Vec<f32>,
    pub(super) t: Vec<f32>,
    pub(super) dq: Vec<f32>,
    pub(super) dk: Vec<f32>,
    pub(super) dv: Vec<f32>,
}

/// `out (tk, tq)` = the first `tk` columns of `src (tq, tp)`, transposed, each value times
/// the mask's `(tq, tk)` entry when there is one.
#[inline(always)]
fn transpose_probs(
    out: &mut [f32],
    src: &[f32],
    tp: usize,
    tq: usize,
    tk: usize,
    mask: Option<&[f32]>,
) {
    for j in 0..tk {
        let o = &mut out[j * tq..][..tq];
        for (i, o) in o.iter_mut().enumerate() {
            *o = src[i * tp + j] * mask.map_or(1.0, |m| m[i * tk + j]);
        }
    }
}

/// Gradients of one sentence's Q `(tq, d)`, K and V `(tk, d)` into `s.dq`, `s.dk`, `s.dv`,
/// given the output gradient `go` `(tq, d)`. With dropout mask M (1 without dropout):
/// dV = (P∘M)ᵀ·dO, dP = (dO·Vᵀ)∘M, dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = dS·K/√d_k,
/// dK = dSᵀ·Q/√d_k. Each head writes its own columns of the three, so nothing is zeroed.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn backward_sentence(
    g: &Geometry,
    q: &[f32],
    kv: &[f32],
    bias: &Bias,
    sentence: usize,
    mask: Option<&[f32]>,
    go: &[f32],
    s: &mut Scratch,
) {
    const FMA: bool = selected_target!().supports_feature_str("fma");
    let d = g.d();
    let (tq, tk, dk) = (g.tq, g.tk, g.dk);
    let tp = tk.next_multiple_of(8);
    s.p.resize(tq * tp, 0.0);
    s.dp.resize(tq * tp, 0.0);
    s.kt.resize(dk * tp, 0.0);
    s.t.resize(tk * tq, 0.0);
    s.dq.resize(tq * d, 0.0);
    s.dk.resize(tk * d, 0.0);
    s.dv.resize(tk * d, 0.0);
    for h in 0..g.heads {
        let off = h * dk;
        let m = mask.map(|m| &m[h * tq * tk..][..tq * tk]);
        let go_h = Strided::new(go, d).at(0, off);
        probs_block::<FMA>(g, q, kv, bias, sentence, h, s);
        // dP = dO·Vᵀ (then ∘ M), with the head's values transposed into `kt`.
        transpose_head(&mut s.kt, kv, tk, g.kvw, g.v_col + off, dk, tp);
        small_product::<FMA>((tq, tp, dk), go_h, Strided::new(&s.kt, tp), &mut s.dp, tp);
        // dV = (P∘M)ᵀ·dO.
        transpose_probs(&mut s.t, &s.p, tp, tq, tk, m);
        small_product::<FMA>(
            (tk, dk, tq),
            Strided::new(&s.t, tq),
            go_h,
            &mut s.dv[off..],
            d,
        );
        // dS, in place of dP.
        for i in 0..tq {
            let p = &s.p[i * tp..][..tk];
            let dp = &mut s.dp[i * tp..][..tk];
            if let Some(m) = m {
                for (dp, m) in dp.iter_mut().zip(&m[i * tk..][..tk]) {
                    *dp *= m;
                }
            }
            let row: f32 = p.iter().zip(dp.iter()).map(|(p, dp)| p * dp).sum();
            for (dp, p) in dp.iter_mut().zip(p) {
                *dp = p * (*dp - row) * g.scale;
            }
        }
        // dQ = dS·K and dK = dSᵀ·Q.
        let k = Strided::new(kv, g.kvw).at(0, g.k_col + off);
        small_product::<FMA>(
            (tq, dk, tk),
            Strided::new(&s.dp, tp),
            k,
            &mut s.dq[off..],
            d,
        );
        transpose_probs(&mut s.t, &s.dp, tp, tq, tk, None);
        let qh = Strided::new(q, g.qw).at(0, g.q_col + off);
        small_product::<FMA>(
            (tk, dk, tq),
            Strided::new(&s.t, tq),
            qh,
            &mut s.dk[off..],
            d,
        );
    }
}

/// Adds `src` `(rows, d)` into columns `col..col + d` of `dst` `(rows, width)`.
pub(super) fn scatter(dst: &mut [f32], width: usize, col: usize, src: &[f32], d: usize) {
    for (dst_row, src_row) in dst.chunks_mut(width).zip(src.chunks(d)) {
        for (a, b) in dst_row[col..col + d].iter_mut().zip(src_row) {
            *a += b;
        }
    }
}
