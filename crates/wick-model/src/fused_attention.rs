//! The attention core, softmax(Q·Kᵀ/√d_k + bias)·V for every head, as one CPU kernel with a
//! hand-written backward.
//!
//! Composed from Candle's primitives, one attention call is about fifteen autograd nodes
//! (head split: reshape, permute, copy and three narrows; scale, transpose, batched matmul,
//! bias add, softmax, matmul, head merge: transpose and copy), each a full-size buffer forward
//! and a zeroed gradient plus an addition backward; and Candle runs the batched matmuls as a
//! serial loop of tiny single-threaded multiplies. Here Q, K and V are read in place from the
//! packed projection `(b, t, 3·d)` (or `(b, t, d)` and `(b, s, 2·d)`), the output is written
//! with heads already merged, the probabilities are recomputed in backward rather than kept,
//! and sentences run in parallel. Written by hand because no crate offers a differentiable
//! fused attention on Candle's CPU backend.
//!
//! [`self_attention_reference`] and [`cross_attention_reference`] compose the same function
//! from Candle ops; they run on devices without the kernel and the tests hold the kernel to
//! them, forward and backward.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Storage, Tensor,
    bail,
};
use std::sync::Arc;

use multiversion::multiversion;
use multiversion::target::selected_target;
use rayon::prelude::*;

use crate::dropout::Dropout;

use crate::ops::{fast_exp, lane_max, lane_sum, slice};

/// Shapes of one call: `b` sentences, `tq` queries, `tk` keys, and where Q, K and V sit in
/// their row-major buffers (row widths `qw`, `kvw`; first columns `q_col`, `k_col`, `v_col`;
/// sentence `n`'s keys/values start at `n · kv_block`, which is more than `tk · kvw` when they
/// are the first `tk` rows of a longer decoding buffer).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    tq: usize,
    tk: usize,
    heads: usize,
    dk: usize,
    qw: usize,
    kvw: usize,
    q_col: usize,
    k_col: usize,
    v_col: usize,
    kv_block: usize,
    scale: f32,
}

impl Geometry {
    fn d(&self) -> usize {
        self.heads * self.dk
    }
}

/// An additive bias `(bb, 1, bq, tk)` with `bb ∈ {1, b}` and `bq ∈ {1, tq}`, broadcast over
/// heads (and over sentences or queries where its size is 1).
#[derive(Clone, Copy)]
struct Bias<'a> {
    data: &'a [f32],
    per_sentence: bool,
    per_query: bool,
    bq: usize,
    tk: usize,
}

impl Bias<'_> {
    fn row(&self, sentence: usize, query: usize) -> &[f32] {
        let s = if self.per_sentence { sentence } else { 0 };
        let q = if self.per_query { query } else { 0 };
        &self.data[(s * self.bq + q) * self.tk..][..self.tk]
    }
}

/// Checks `bias` against the call's shape and hands its data to `f`.
fn with_bias<R>(bias: &Tensor, g: &Geometry, f: impl FnOnce(Bias<'_>) -> Result<R>) -> Result<R> {
    let (bb, one, bq, tk) = bias.dims4()?;
    if one != 1 || !(bb == 1 || bb == g.b) || !(bq == 1 || bq == g.tq) || tk != g.tk {
        bail!(
            "attention: bias {:?} does not broadcast to ({}, heads, {}, {})",
            bias.dims(),
            g.b,
            g.tq,
            g.tk
        )
    }
    let (storage, layout) = bias.storage_and_layout();
    let data = match &*storage {
        Storage::Cpu(cpu) => slice(cpu, layout, "attention bias")?,
        _ => bail!("attention: the fused kernel runs on the CPU only"),
    };
    f(Bias {
        data,
        per_sentence: bb > 1,
        per_query: bq > 1,
        bq,
        tk,
    })
}

/// Dot product of two head rows. `FMA` is true only inside the kernels' AVX2+FMA builds
/// (see [`forward_sentence`]), which take the intrinsic version: LLVM vectorises the portable
/// loop into one accumulator chain and a scalar horizontal sum, which at d_k = 32 cost more
/// than the products (measured in `perf annotate`). Always inlined, here and below, so that
/// the kernels' builds compile it with their features.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is set only in code compiled for, and dispatched to, CPUs with AVX2
        // and FMA.
        return unsafe { dot_fma(a, b) };
    }
    dot_portable(a, b)
}

/// Eight independent accumulators, which the compiler turns into SIMD lanes (a single
/// running sum would have to stay scalar to keep the order of float additions).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Two 8-lane fused multiply-add chains and one shuffle-based horizontal sum. Written with
/// intrinsics because the compiler does not produce this shape from portable code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8 ≤ n (or i + 16 ≤ n) of both slices.
    unsafe {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            let (x, y) = (
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            acc1 = _mm256_fmadd_ps(x, y, acc1);
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let mut s = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

/// Eight dot products with one vector: `out[i] = q · keys[i·stride ..][.. q.len()]`. `FMA` as
/// in [`dot`]; with it and `q.len()` a multiple of 8, [`dot8_fma`].
#[inline(always)]
fn dot8<const FMA: bool>(q: &[f32], keys: &[f32], stride: usize) -> [f32; 8] {
    let n = q.len();
    #[cfg(target_arch = "x86_64")]
    if FMA && n.is_multiple_of(8) && keys.len() >= 7 * stride + n {
        // SAFETY: as in `dot`; the key rows lie within `keys` (checked above).
        return unsafe { dot8_fma(q, keys, stride) };
    }
    std::array::from_fn(|i| dot::<FMA>(q, &keys[i * stride..][..n]))
}

/// [`dot8`] as eight FMA chains, one per key, and one transposing reduction of the eight
/// accumulators (six horizontal adds, two lane permutes, one add) in place of eight separate
/// horizontal sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot8_fma(q: &[f32], keys: &[f32], stride: usize) -> [f32; 8] {
    use std::arch::x86_64::*;
    let n = q.len();
    let mut out = [0f32; 8];
    // SAFETY: the caller checked n % 8 == 0 and keys.len() ≥ 7·stride + n, so every load
    // reads 8 floats within q or within key row i < 8.
    unsafe {
        let (pq, pk) = (q.as_ptr(), keys.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut c = 0;
        while c < n {
            let x = _mm256_loadu_ps(pq.add(c));
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(pk.add(i * stride + c)), *acc);
            }
            c += 8;
        }
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]: two rounds
        // leave each key's four partial sums per 128-bit half, the permutes line the halves up.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let low = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
        let high = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(low, high));
    }
    out
}

/// A row-major matrix operand inside a larger buffer: row `i` starts at `data[i · stride]`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    stride: usize,
}

impl<'a> Strided<'a> {
    fn new(data: &'a [f32], stride: usize) -> Self {
        Self { data, stride }
    }

    /// The operand from row `row`, column `col` on.
    fn at(self, row: usize, col: usize) -> Self {
        Self::new(&self.data[row * self.stride + col..], self.stride)
    }
}

/// `out (m, n) = a (m, k) · b (k, n)`, with `out`'s rows `ldo` apart: the per-head products of
/// the attention core (m, n and k are sequence lengths and d_k, a few dozen). Tiles of 4 rows
/// × 16 (or 8, then 1) columns keep their sums in registers and take each row of `b` as a
/// vector, so no dot product needs a horizontal sum; a dot product per score with a 32-wide
/// d_k spent as long on its horizontal sum as on the products (the kernel ran at a few
/// GFLOP/s in a one-thread profile of the small preset's training step). Too small for
/// `gemm`, whose packing would cost more than the product. `FMA` as in [`dot`].
#[inline(always)]
fn small_product<const FMA: bool>(
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let mut j = 0;
    while j + 16 <= n {
        product_columns::<FMA, 16>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 16;
    }
    if j + 8 <= n {
        product_columns::<FMA, 8>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 8;
    }
    while j < n {
        product_columns::<FMA, 1>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 1;
    }
}

/// [`small_product`] for `C` columns of `b` and `out`, four rows at a time.
#[inline(always)]
fn product_columns<const FMA: bool, const C: usize>(
    m: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let mut i = 0;
    while i + 4 <= m {
        product_tile::<FMA, 4, C>(k, a.at(i, 0), b, &mut out[i * ldo..], ldo);
        i += 4;
    }
    while i < m {
        row_tile::<FMA, C>(k, &a.data[i * a.stride..][..k], b, &mut out[i * ldo..][..C]);
        i += 1;
    }
}

/// `x·y + acc`, fused when `FMA` (see [`dot`]).
#[inline(always)]
fn madd<const FMA: bool>(x: f32, y: f32, acc: f32) -> f32 {
    if FMA { x.mul_add(y, acc) } else { acc + x * y }
}

#[inline(always)]
fn product_tile<const FMA: bool, const R: usize, const C: usize>(
    k: usize,
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a.data[r * a.stride..][..k]);
    let mut acc = [[0f32; C]; R];
    for kk in 0..k {
        let bk = &b.data[kk * b.stride..][..C];
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let x = row[kk];
            for (acc, &y) in acc.iter_mut().zip(bk) {
                *acc = madd::<FMA>(x, y, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * ldo..][..C].copy_from_slice(acc);
    }
}

/// [`product_tile`] for a single row `a` `(k,)`, with the sum over k split four ways. One row
/// gives only C/8 chains of dependent multiply-adds, each waiting on the last one's latency:
/// a decoding step's `(1, tk)·(tk, d_k)` product of probabilities and values ran at one
/// multiply-add per four cycles (perf annotate, small preset).
#[inline(always)]
fn row_tile<const FMA: bool, const C: usize>(k: usize, a: &[f32], b: Strided, out: &mut [f32]) {
    let mut acc = [[0f32; C]; 4];
    let mut kk = 0;
    while kk + 4 <= k {
        for (u, acc) in acc.iter_mut().enumerate() {
            let x = a[kk + u];
            for (acc, &y) in acc.iter_mut().zip(&b.data[(kk + u) * b.stride..][..C]) {
                *acc = madd::<FMA>(x, y, *acc);
            }
        }
        kk += 4;
    }
    for (kk, &x) in a.iter().enumerate().skip(kk) {
        for (acc, &y) in acc[0].iter_mut().zip(&b.data[kk * b.stride..][..C]) {
            *acc = madd::<FMA>(x, y, *acc);
        }
    }
    for (c, out) in out.iter_mut().enumerate() {
        *out = (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]);
    }
}

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

/// [`forward_sentence`] for a single query without dropout (a decoding step). The scores go
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
    out: &mut [f32],
    p: &mut [f32],
) {
    let (tk, dk, d) = (g.tk, g.dk, g.d());
    let brow = bias.row(sentence, 0);
    let q = &q[g.q_col..][..d];
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
fn forward_sentence(
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
    if tq == 1 && mask.is_none() {
        s.p.resize(g.heads * tk, 0.0);
        return forward_one_query::<FMA>(g, q, kv, bias, sentence, out, &mut s.p);
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

/// The whole forward: output `(b, tq, d)`, sentences in parallel. `q` holds `b` blocks of
/// `tq` rows of width `qw`, `kv` `b` blocks of `tk` rows of width `kvw`, `kv_block` apart.
fn forward_all(
    g: &Geometry,
    q: &[f32],
    kv: &[f32],
    bias: &Tensor,
    mask: &Option<Arc<Vec<f32>>>,
) -> Result<(CpuStorage, Shape)> {
    let d = g.d();
    let mut out = vec![0f32; g.b * g.tq * d];
    with_bias(bias, g, |bias| {
        out.par_chunks_mut(g.tq * d)
            .enumerate()
            .for_each_init(Scratch::default, |s, (n, out)| {
                let q = &q[n * g.tq * g.qw..][..g.tq * g.qw];
                let kv = &kv[n * g.kv_block..][..g.tk * g.kvw];
                let mask = sentence_mask(mask, g, n);
                forward_sentence(g, q, kv, &bias, n, mask, out, s);
            });
        Ok(())
    })?;
    Ok((CpuStorage::F32(out), Shape::from((g.b, g.tq, d))))
}

/// Per-thread scratch of the kernels: probabilities `p` and their gradient `dp` `(tq, tp)`,
/// one head's keys or values transposed `kt` `(dk, tp)`, a transposed `(tk, tq)` block `t`,
/// and one sentence's gradients of Q `(tq, d)`, K and V `(tk, d)`.
#[derive(Default)]
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
    kt: Vec<f32>,
    t: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
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
fn backward_sentence(
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
fn scatter(dst: &mut [f32], width: usize, col: usize, src: &[f32], d: usize) {
    for (dst_row, src_row) in dst.chunks_mut(width).zip(src.chunks(d)) {
        for (a, b) in dst_row[col..col + d].iter_mut().zip(src_row) {
            *a += b;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Self-attention over a packed QKV projection.

struct SelfAttention {
    bias: Tensor,
    heads: usize,
    /// Attention dropout mask `(b, h, t, t)`, shared with the backward op.
    mask: Option<Arc<Vec<f32>>>,
}

/// The mask rows of sentence `n`: `heads · tq · tk` values.
fn sentence_mask<'a>(mask: &'a Option<Arc<Vec<f32>>>, g: &Geometry, n: usize) -> Option<&'a [f32]> {
    let len = g.heads * g.tq * g.tk;
    mask.as_ref().map(|m| &m[n * len..][..len])
}

fn self_geometry(shape: &Shape, heads: usize) -> Result<Geometry> {
    let (b, t, w) = shape.dims3()?;
    if w % (3 * heads) != 0 {
        bail!("self-attention: packed width {w} is not 3 × heads ({heads}) × d_k")
    }
    let d = w / 3;
    let dk = d / heads;
    Ok(Geometry {
        b,
        tq: t,
        tk: t,
        heads,
        dk,
        qw: w,
        kvw: w,
        q_col: 0,
        k_col: d,
        v_col: 2 * d,
        kv_block: t * w,
        scale: (dk as f32).powf(-0.5),
    })
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "wick-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self_geometry(l.shape(), self.heads)?;
        let qkv = slice(s, l, "self-attention qkv")?;
        // Queries and keys/values are rows of the same packed buffer.
        forward_all(&g, qkv, qkv, &self.bias, &self.mask)
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = SelfAttentionBackward {
            bias: self.bias.clone(),
            heads: self.heads,
            mask: self.mask.clone(),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

struct SelfAttentionBackward {
    bias: Tensor,
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for SelfAttentionBackward {
    fn name(&self) -> &'static str {
        "wick-self-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self_geometry(l1.shape(), self.heads)?;
        let qkv = slice(s1, l1, "self-attention qkv")?;
        let go = slice(s2, l2, "self-attention output gradient")?;
        let d = g.d();
        let mut dqkv = vec![0f32; g.b * g.tq * g.qw];
        with_bias(&self.bias, &g, |bias| {
            dqkv.par_chunks_mut(g.tq * g.qw).enumerate().for_each_init(
                Scratch::default,
                |s, (n, dst)| {
                    let rows = &qkv[n * g.tq * g.qw..][..g.tq * g.qw];
                    let go = &go[n * g.tq * d..][..g.tq * d];
                    let mask = sentence_mask(&self.mask, &g, n);
                    backward_sentence(&g, rows, rows, &bias, n, mask, go, s);
                    scatter(dst, g.qw, g.q_col, &s.dq, d);
                    scatter(dst, g.qw, g.k_col, &s.dk, d);
                    scatter(dst, g.qw, g.v_col, &s.dv, d);
                },
            );
            Ok(())
        })?;
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// Queries attending to a packed key/value projection (cross-attention, incremental decoding).

struct CrossAttention {
    bias: Tensor,
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
}

fn cross_geometry(q: &Shape, kv: &Shape, heads: usize) -> Result<Geometry> {
    let (b, tq, qw) = q.dims3()?;
    let (bk, tk, kvw) = kv.dims3()?;
    if kvw % (2 * heads) != 0 || bk != b || qw < kvw / 2 {
        bail!("attention: queries {q:?} and packed keys/values {kv:?} do not match")
    }
    let d = kvw / 2;
    let dk = d / heads;
    Ok(Geometry {
        b,
        tq,
        tk,
        heads,
        dk,
        qw,
        kvw,
        q_col: 0,
        k_col: 0,
        v_col: d,
        kv_block: tk * kvw,
        scale: (dk as f32).powf(-0.5),
    })
}

/// The distance between sentences of keys/values `(b, tk, w)` whose rows are contiguous:
/// `tk · w` when the whole tensor is, more when they are the first `tk` rows of a longer
/// per-sentence buffer (`narrow(1, 0, tk)` of `(b, cap, w)`, as a decoding cache hands them
/// over). `None` for any other layout.
fn sentence_block(l: &Layout) -> Option<usize> {
    let (b, tk, w) = l.shape().dims3().ok()?;
    if l.is_contiguous() {
        return Some(tk * w);
    }
    match *l.stride() {
        [block, row, 1] if row == w && block >= tk * w && b > 0 => Some(block),
        _ => None,
    }
}

/// The data of keys/values laid out as [`sentence_block`] accepts, and that distance.
fn sentence_blocks<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<(&'a [f32], usize)> {
    let Some(block) = sentence_block(l) else {
        bail!(
            "{what}: expected contiguous rows, got strides {:?}",
            l.stride()
        )
    };
    if l.is_contiguous() {
        return Ok((slice(s, l, what)?, block));
    }
    let CpuStorage::F32(data) = s else {
        bail!("{what}: expected f32")
    };
    let (b, tk, w) = l.shape().dims3()?;
    Ok((&data[l.start_offset()..][..(b - 1) * block + tk * w], block))
}

impl CustomOp2 for CrossAttention {
    fn name(&self) -> &'static str {
        "wick-cross-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut g = cross_geometry(l1.shape(), l2.shape(), self.heads)?;
        let q = slice(s1, l1, "attention queries")?;
        let kv;
        (kv, g.kv_block) = sentence_blocks(s2, l2, "attention keys/values")?;
        forward_all(&g, q, kv, &self.bias, &self.mask)
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = CrossAttentionBackward {
            bias: self.bias.clone(),
            heads: self.heads,
            mask: self.mask.clone(),
        };
        // One buffer holds both gradients, dQ then dKV, so that each is a contiguous slice.
        let both = q.apply_op3_no_bwd(&kv.contiguous()?, &grad.contiguous()?, &op)?;
        let nq = q.elem_count();
        let dq = both.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dkv = both.narrow(0, nq, kv.elem_count())?.reshape(kv.shape())?;
        Ok((Some(dq), Some(dkv)))
    }
}

struct CrossAttentionBackward {
    bias: Tensor,
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for CrossAttentionBackward {
    fn name(&self) -> &'static str {
        "wick-cross-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = cross_geometry(l1.shape(), l2.shape(), self.heads)?;
        let q = slice(s1, l1, "attention queries")?;
        let kv = slice(s2, l2, "attention keys/values")?;
        let go = slice(s3, l3, "attention output gradient")?;
        let d = g.d();
        let nq = g.b * g.tq * g.qw;
        let mut both = vec![0f32; nq + g.b * g.tk * g.kvw];
        let (dq_all, dkv_all) = both.split_at_mut(nq);
        with_bias(&self.bias, &g, |bias| {
            dq_all
                .par_chunks_mut(g.tq * g.qw)
                .zip(dkv_all.par_chunks_mut(g.tk * g.kvw))
                .enumerate()
                .for_each_init(Scratch::default, |s, (n, (dq, dkv))| {
                    let q = &q[n * g.tq * g.qw..][..g.tq * g.qw];
                    let kv = &kv[n * g.kv_block..][..g.tk * g.kvw];
                    let go = &go[n * g.tq * d..][..g.tq * d];
                    let mask = sentence_mask(&self.mask, &g, n);
                    backward_sentence(&g, q, kv, &bias, n, mask, go, s);
                    scatter(dq, g.qw, g.q_col, &s.dq, d);
                    scatter(dkv, g.kvw, g.k_col, &s.dk, d);
                    scatter(dkv, g.kvw, g.v_col, &s.dv, d);
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(both), Shape::from(nq + g.b * g.tk * g.kvw)))
    }
}

// ---------------------------------------------------------------------------------------
// Entry points.

fn use_kernel(xs: &Tensor, bias: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && bias.dtype() == DType::F32
}

/// The attention dropout mask for probabilities `(b, heads, tq, tk)`, drawn from `dropout`'s
/// stream in the order its composed form would draw it, or `None` when inactive.
fn draw(dropout: Option<&Dropout>, n: usize) -> Result<Option<Arc<Vec<f32>>>> {
    match dropout {
        Some(d) if d.is_active(true) => Ok(Some(Arc::new(d.draw_mask(n)?))),
        _ => Ok(None),
    }
}

/// Multi-head self-attention from a packed projection, with attention dropout when
/// `dropout` is given (training).
///
/// # Shapes
/// qkv `(b, t, 3·d)` (Q, K, V side by side), bias `(1|b, 1, 1|t, t)` → `(b, t, d)`, heads
/// merged.
pub fn self_attention(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    if !use_kernel(qkv, bias) {
        return self_attention_reference(qkv, bias, heads, dropout);
    }
    let (b, t, _) = qkv.dims3()?;
    qkv.contiguous()?.apply_op1(SelfAttention {
        bias: bias.contiguous()?,
        heads,
        mask: draw(dropout, b * heads * t * t)?,
    })
}

/// Multi-head attention from queries to a packed key/value projection. Only the first `d`
/// columns of `q` are read, so a packed QKV row can serve as the query of a decoding step.
///
/// # Shapes
/// q `(b, tq, w ≥ d)`, kv `(b, tk, 2·d)` (K, V side by side), bias `(1|b, 1, 1|tq, tk)` →
/// `(b, tq, d)`.
pub fn cross_attention(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    if !use_kernel(q, bias) || !kv.device().is_cpu() || kv.dtype() != DType::F32 {
        return cross_attention_reference(q, kv, bias, heads, dropout);
    }
    let (b, tq, _) = q.dims3()?;
    let tk = kv.dim(1)?;
    // A decoding cache's rows are read in place from its buffer.
    let kv = match sentence_block(kv.layout()) {
        Some(_) => kv.clone(),
        None => kv.contiguous()?,
    };
    q.contiguous()?.apply_op2(
        &kv,
        CrossAttention {
            bias: bias.contiguous()?,
            heads,
            mask: draw(dropout, b * heads * tq * tk)?,
        },
    )
}

/// `(b, t, ·)` columns `col..col + d` → `(b, h, t, d/h)`.
fn heads_of(xs: &Tensor, col: usize, d: usize, heads: usize) -> Result<Tensor> {
    let (b, t, _) = xs.dims3()?;
    xs.narrow(D::Minus1, col, d)?
        .reshape((b, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// The composed path: output `(b, tq, d)` and probabilities `(b, h, tq, tk)` from Candle
/// ops, for attention maps, attention dropout (`on_probs` is applied to the probabilities
/// before they weight V) and devices without the kernel.
pub fn attention_with_probs(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    on_probs: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let d = kv.dim(D::Minus1)? / 2;
    let (b, tq, _) = q.dims3()?;
    let qh = heads_of(q, 0, d, heads)?;
    let kh = heads_of(kv, 0, d, heads)?;
    let vh = heads_of(kv, d, d, heads)?;
    // Scaling q is cheaper than scaling the scores.
    let qh = (qh * ((d / heads) as f64).powf(-0.5))?;
    let scores = qh.matmul(&kh.t()?)?.broadcast_add(bias)?; // (b, h, tq, tk)
    let probs = crate::ops::softmax_last_dim(&scores)?;
    let out = on_probs(&probs)?.matmul(&vh)?; // (b, h, tq, dk)
    let out = out.transpose(1, 2)?.reshape((b, tq, d))?; // reshape copies the transposed layout
    Ok((out, probs))
}

/// [`cross_attention`] composed from Candle ops.
pub fn cross_attention_reference(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    let on_probs = |p: &Tensor| match dropout {
        Some(d) => d.forward_t(p, true),
        None => Ok(p.clone()),
    };
    Ok(attention_with_probs(q, kv, bias, heads, on_probs)?.0)
}

/// [`self_attention`] composed from Candle ops.
pub fn self_attention_reference(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    let d = qkv.dim(D::Minus1)? / 3;
    cross_attention_reference(
        &qkv.narrow(D::Minus1, 0, d)?,
        &qkv.narrow(D::Minus1, d, 2 * d)?,
        bias,
        heads,
        dropout,
    )
}
