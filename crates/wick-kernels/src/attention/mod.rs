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
//! The attention dropout mask, when there is one, is drawn by the caller: `(b, h, tq, tk)`
//! values `0` or `1/(1-p)` applied to the probabilities.

mod core;
mod tiles;

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail,
};
use rayon::prelude::*;

use self::core::{QUERIES_ONE_BY_ONE, Scratch, backward_sentence, forward_sentence, scatter};
use crate::storage::slice;

/// Shapes of one call: `b` sentences, `tq` queries, `tk` keys, and where Q, K and V sit in
/// their row-major buffers (row widths `qw`, `kvw`; first columns `q_col`, `k_col`, `v_col`;
/// sentence `n`'s keys/values start at `n · kv_block`, which is more than `tk · kvw` when they
/// are the first `tk` rows of a longer decoding buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(super) b: usize,
    pub(super) tq: usize,
    pub(super) tk: usize,
    pub(super) heads: usize,
    pub(super) dk: usize,
    pub(super) qw: usize,
    pub(super) kvw: usize,
    pub(super) q_col: usize,
    pub(super) k_col: usize,
    pub(super) v_col: usize,
    pub(super) kv_block: usize,
    pub(super) scale: f32,
    /// Queries per sentence up to which the forward without dropout runs them one at a time:
    /// [`QUERIES_ONE_BY_ONE`] for queries against a memory, 1 for self-attention.
    pub(super) one_by_one: usize,
}

impl Geometry {
    pub(super) fn d(&self) -> usize {
        self.heads * self.dk
    }
}

/// An additive bias `(bb, 1, bq, tk)` with `bb ∈ {1, b}` and `bq ∈ {1, tq}`, broadcast over
/// heads (and over sentences or queries where its size is 1).
#[derive(Clone, Copy)]
pub(crate) struct Bias<'a> {
    pub(super) data: &'a [f32],
    pub(super) per_sentence: bool,
    pub(super) per_query: bool,
    pub(super) bq: usize,
    pub(super) tk: usize,
}

impl Bias<'_> {
    pub(super) fn row(&self, sentence: usize, query: usize) -> &[f32] {
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

// ---------------------------------------------------------------------------------------
// Self-attention over a packed QKV projection.

/// Queries, keys and values from one packed projection `(b, t, 3·d)`.
struct QkvAttention {
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
        one_by_one: 1,
    })
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "wick-attention-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self_geometry(l.shape(), self.heads)?;
        let qkv = slice(s, l, "self-attention qkv")?;
        // Queries and keys/values are rows of the same packed buffer.
        forward_all(&g, qkv, qkv, &self.bias, &self.mask)
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = QkvAttentionBackward {
            bias: self.bias.clone(),
            heads: self.heads,
            mask: self.mask.clone(),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

struct QkvAttentionBackward {
    bias: Tensor,
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for QkvAttentionBackward {
    fn name(&self) -> &'static str {
        "wick-attention-qkv-backward"
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
// Queries attending to a packed key/value projection (cross-attention, decoding steps).

/// Queries `(b, tq, ≥ d)` against keys and values packed side by side `(b, tk, 2·d)`.
struct KvAttention {
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
        one_by_one: QUERIES_ONE_BY_ONE,
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

impl CustomOp2 for KvAttention {
    fn name(&self) -> &'static str {
        "wick-attention-kv"
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
        let op = KvAttentionBackward {
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

struct KvAttentionBackward {
    bias: Tensor,
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for KvAttentionBackward {
    fn name(&self) -> &'static str {
        "wick-attention-kv-backward"
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

// ---------------------------------------------------------------------------------------
// Entry points.

fn check_mask(mask: &Option<Vec<f32>>, n: usize) -> Result<()> {
    match mask {
        Some(m) if m.len() != n => bail!(
            "attention: dropout mask of {} for {n} probabilities",
            m.len()
        ),
        _ => Ok(()),
    }
}

/// Multi-head self-attention from a packed projection, with the attention dropout `mask`
/// (`(b, heads, t, t)` values) in training.
///
/// # Shapes
/// qkv `(b, t, 3·d)` (Q, K, V side by side), bias `(1|b, 1, 1|t, t)` → `(b, t, d)`, heads
/// merged.
pub fn attention_qkv(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    crate::enter("attention", &[qkv, bias])?;
    let (b, t, _) = qkv.dims3()?;
    check_mask(&mask, b * heads * t * t)?;
    qkv.contiguous()?.apply_op1(QkvAttention {
        bias: bias.contiguous()?,
        heads,
        mask: mask.map(Arc::new),
    })
}

/// Multi-head attention from queries to a packed key/value projection, with the attention
/// dropout `mask` (`(b, heads, tq, tk)` values) in training. Only the first `d` columns of `q`
/// are read, so a packed QKV row can serve as the query of a decoding step; the keys/values
/// may be the first `tk` rows of a longer per-sentence buffer (a decoding cache), read in
/// place.
///
/// # Shapes
/// q `(b, tq, w ≥ d)`, kv `(b, tk, 2·d)` (K, V side by side), bias `(1|b, 1, 1|tq, tk)` →
/// `(b, tq, d)`.
pub fn attention(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    crate::enter("attention", &[q, kv, bias])?;
    let (b, tq, _) = q.dims3()?;
    let tk = kv.dim(1)?;
    check_mask(&mask, b * heads * tq * tk)?;
    let kv = match sentence_block(kv.layout()) {
        Some(_) => kv.clone(),
        None => kv.contiguous()?,
    };
    q.contiguous()?.apply_op2(
        &kv,
        KvAttention {
            bias: bias.contiguous()?,
            heads,
            mask: mask.map(Arc::new),
        },
    )
}
