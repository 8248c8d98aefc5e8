//! GRU and LSTM cells: one time step's gates from the two projections, as one autograd node;
//! and the additive attention score of the RNN decoders, which runs at every step too.
//!
//! The products `x·W_ihᵀ + b_ih` (all time steps at once where the inputs are known) and
//! `h·W_hhᵀ + b_hh` stay with the affine kernel; what is left of a step is a dozen elementwise
//! ops on `(b, G·H)` values, each of which Candle would run as its own node with its own
//! buffer, gradient buffer and accumulation. Here forward is one pass over the gates and
//! backward another, which recomputes the gates from the saved projections instead of
//! keeping them. Gate layouts are PyTorch's: `r, z, n` (GRU) and `i, f, g, o` (LSTM).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;

use crate::simd::{fast_exp, lane_dot};
use crate::storage::{for_rows, slices3};

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // 2σ(2x) − 1: vectorises like σ; absolute error ~1e-7.
    2.0 / (1.0 + fast_exp(-2.0 * x)) - 1.0
}

/// `r = σ(a_r + b_r)`, `z = σ(a_z + b_z)`, `n = tanh(a_n + r·b_n)`, `h' = n + z·(h − n)`
/// for one row (`a` = input projection, `b` = recurrent projection).
#[multiversion(targets("x86_64+avx2+fma"))]
fn gru_row(out: &mut [f32], a: &[f32], b: &[f32], h: &[f32]) {
    let d = h.len();
    for j in 0..d {
        let r = sigmoid(a[j] + b[j]);
        let z = sigmoid(a[d + j] + b[d + j]);
        let n = tanh(a[2 * d + j] + r * b[2 * d + j]);
        out[j] = n + z * (h[j] - n);
    }
}

/// Backward of [`gru_row`]: `out = [∂a (3H) | ∂b (3H) | ∂h (H)]` from `dy`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn gru_backward_row(out: &mut [f32], a: &[f32], b: &[f32], h: &[f32], dy: &[f32]) {
    let d = h.len();
    let (da, rest) = out.split_at_mut(3 * d);
    let (db, dh) = rest.split_at_mut(3 * d);
    for j in 0..d {
        let r = sigmoid(a[j] + b[j]);
        let z = sigmoid(a[d + j] + b[d + j]);
        let bn = b[2 * d + j];
        let n = tanh(a[2 * d + j] + r * bn);
        let g = dy[j];
        let dn = g * (1.0 - z) * (1.0 - n * n);
        let dz = g * (h[j] - n) * z * (1.0 - z);
        let dr = dn * bn * r * (1.0 - r);
        da[j] = dr;
        db[j] = dr;
        da[d + j] = dz;
        db[d + j] = dz;
        da[2 * d + j] = dn;
        db[2 * d + j] = dn * r;
        dh[j] = g * z;
    }
}

/// `c' = σ(f)·c + σ(i)·tanh(g)`, `h' = σ(o)·tanh(c')`, gates `= a + b`; `out = [h' | c']`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn lstm_row(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    let d = c.len();
    let (ho, co) = out.split_at_mut(d);
    for j in 0..d {
        let i = sigmoid(a[j] + b[j]);
        let f = sigmoid(a[d + j] + b[d + j]);
        let g = tanh(a[2 * d + j] + b[2 * d + j]);
        let o = sigmoid(a[3 * d + j] + b[3 * d + j]);
        let cn = f * c[j] + i * g;
        co[j] = cn;
        ho[j] = o * tanh(cn);
    }
}

/// Backward of [`lstm_row`]: `out = [∂gates (4H) | ∂c (H)]` from `dy = [∂h' | ∂c']`; the
/// gates' gradient is both projections'.
#[multiversion(targets("x86_64+avx2+fma"))]
fn lstm_backward_row(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], dy: &[f32]) {
    let d = c.len();
    let (dg, dc) = out.split_at_mut(4 * d);
    for j in 0..d {
        let i = sigmoid(a[j] + b[j]);
        let f = sigmoid(a[d + j] + b[d + j]);
        let g = tanh(a[2 * d + j] + b[2 * d + j]);
        let o = sigmoid(a[3 * d + j] + b[3 * d + j]);
        let cn = f * c[j] + i * g;
        let tc = tanh(cn);
        let dh = dy[j];
        let dcn = dy[d + j] + dh * o * (1.0 - tc * tc);
        dg[j] = dcn * g * i * (1.0 - i);
        dg[d + j] = dcn * c[j] * f * (1.0 - f);
        dg[2 * d + j] = dcn * i * (1.0 - g * g);
        dg[3 * d + j] = dh * tc * o * (1.0 - o);
        dc[j] = dcn * f;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Gru,
    Lstm,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
}

/// One step of a cell: `(gi, gh, state) → output`. The state is `h` (GRU) or `c` (LSTM).
struct CellStep(Cell);

impl CustomOp3 for CellStep {
    fn name(&self) -> &'static str {
        match self.0 {
            Cell::Gru => "wick-gru-cell",
            Cell::Lstm => "wick-lstm-cell",
        }
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
        let what = self.name();
        let (a, b, s) = slices3(what, (s1, l1), (s2, l2), (s3, l3))?;
        let (rows, d) = l3.shape().dims2()?;
        let g = self.0.gates();
        if a.len() != rows * g * d || b.len() != a.len() {
            bail!(
                "{what}: projections of {} and {} values for {rows} rows of {d}",
                a.len(),
                b.len()
            )
        }
        let width = match self.0 {
            Cell::Gru => d,
            Cell::Lstm => 2 * d,
        };
        let mut out = vec![0f32; rows * width];
        for_rows(&mut out, width, |r, o| {
            let (ar, br) = (
                &a[r * g * d..(r + 1) * g * d],
                &b[r * g * d..(r + 1) * g * d],
            );
            let sr = &s[r * d..(r + 1) * d];
            match self.0 {
                Cell::Gru => gru_row(o, ar, br, sr),
                Cell::Lstm => lstm_row(o, ar, br, sr),
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = s.dim(1)?;
        let g = self.0.gates() * d;
        // The state and the output's gradient side by side: the backward op has three inputs.
        let state_grad = Tensor::cat(&[s, &grad.contiguous()?], 1)?;
        let packed = a.apply_op3_no_bwd(b, &state_grad, &CellBackward(self.0))?;
        match self.0 {
            Cell::Gru => Ok((
                Some(packed.narrow(1, 0, g)?),
                Some(packed.narrow(1, g, g)?),
                Some(packed.narrow(1, 2 * g, d)?),
            )),
            Cell::Lstm => {
                let dgates = packed.narrow(1, 0, g)?;
                Ok((
                    Some(dgates.clone()),
                    Some(dgates),
                    Some(packed.narrow(1, g, d)?),
                ))
            }
        }
    }
}

/// `(gi, gh, [state | ∂output]) → packed gradients` of [`CellStep`].
struct CellBackward(Cell);

impl CustomOp3 for CellBackward {
    fn name(&self) -> &'static str {
        "wick-cell-backward"
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
        let what = self.name();
        let (a, b, sg) = slices3(what, (s1, l1), (s2, l2), (s3, l3))?;
        let (rows, sg_width) = l3.shape().dims2()?;
        // [h | ∂h'] (GRU, 2H) or [c | ∂h' | ∂c'] (LSTM, 3H).
        let d = match self.0 {
            Cell::Gru => sg_width / 2,
            Cell::Lstm => sg_width / 3,
        };
        let g = self.0.gates() * d;
        let width = match self.0 {
            Cell::Gru => 2 * g + d,
            Cell::Lstm => g + d,
        };
        let mut out = vec![0f32; rows * width];
        for_rows(&mut out, width, |r, o| {
            let (ar, br) = (&a[r * g..(r + 1) * g], &b[r * g..(r + 1) * g]);
            let row = &sg[r * sg_width..(r + 1) * sg_width];
            let (state, dy) = row.split_at(d);
            match self.0 {
                Cell::Gru => gru_backward_row(o, ar, br, state, dy),
                Cell::Lstm => lstm_backward_row(o, ar, br, state, dy),
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, width))))
    }
}

fn step(cell: Cell, gi: &Tensor, gh: &Tensor, state: &Tensor) -> Result<Tensor> {
    crate::enter(
        match cell {
            Cell::Gru => "gru-cell",
            Cell::Lstm => "lstm-cell",
        },
        &[gi, gh, state],
    )?;
    let (rows, d) = state.dims2()?;
    let g = cell.gates() * d;
    if gi.dims2()? != (rows, g) || gh.dims2()? != (rows, g) {
        bail!(
            "recurrent cell: projections {:?} and {:?} for a state of {:?}",
            gi.dims(),
            gh.dims(),
            state.dims()
        )
    }
    gi.contiguous()?
        .apply_op3(&gh.contiguous()?, &state.contiguous()?, CellStep(cell))
}

/// A GRU step, differentiable in all three operands.
///
/// # Shapes
/// gi, gh `(b, 3H)` (the input and recurrent projections with their biases), h `(b, H)` →
/// h' `(b, H)`.
pub fn gru_cell(gi: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    step(Cell::Gru, gi, gh, h)
}

/// An LSTM step, differentiable in all three operands.
///
/// # Shapes
/// gi, gh `(b, 4H)`, c `(b, H)` → `[h' | c']` `(b, 2H)`.
pub fn lstm_cell(gi: &Tensor, gh: &Tensor, c: &Tensor) -> Result<Tensor> {
    step(Cell::Lstm, gi, gh, c)
}

/// `vᵀ tanh(K[s] + q)` of one sentence, for every source position: the tanh of a whole key
/// row first, in a plain elementwise loop that vectorises, then its dot product with `v` in
/// eight lanes. This is most of an RNN decoding step's arithmetic besides the products.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn additive_row(out: &mut [f32], keys: &[f32], q: &[f32], v: &[f32]) {
    let d = q.len();
    let mut t = vec![0f32; d];
    for (o, k) in out.iter_mut().zip(keys.chunks_exact(d)) {
        for ((t, &k), &q) in t.iter_mut().zip(k).zip(q) {
            *t = tanh(k + q);
        }
        *o = lane_dot(&t, v);
    }
}

/// Backward of [`additive_row`] for one sentence: `∂K` into `dk`, `∂q` into `dq`, and this
/// sentence's part of `∂v` added into `dv`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn additive_backward_row(
    dk: &mut [f32],
    dq: &mut [f32],
    dv: &mut [f32],
    keys: &[f32],
    q: &[f32],
    v: &[f32],
    g: &[f32],
) {
    let d = q.len();
    let mut t = vec![0f32; d];
    dq.fill(0.0);
    for ((dkr, k), &gs) in dk.chunks_exact_mut(d).zip(keys.chunks_exact(d)).zip(g) {
        // As forward: the tanh of the row first, so that both loops vectorise.
        for ((t, &k), &q) in t.iter_mut().zip(k).zip(q) {
            *t = tanh(k + q);
        }
        for ((((dk, &t), &v), dq), dv) in dkr
            .iter_mut()
            .zip(&t)
            .zip(v)
            .zip(dq.iter_mut())
            .zip(dv.iter_mut())
        {
            let dpre = gs * v * (1.0 - t * t);
            *dk = dpre;
            *dq += dpre;
            *dv += gs * t;
        }
    }
}

/// Additive (Bahdanau) attention scores `vᵀ tanh(K + W_q q)`, with the query already
/// projected: `(keys (b, s, H), q (b, H), v (H)) → (b, s)`.
struct AdditiveScores;

impl CustomOp3 for AdditiveScores {
    fn name(&self) -> &'static str {
        "wick-additive-scores"
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
        let what = self.name();
        let (keys, q, v) = slices3(what, (s1, l1), (s2, l2), (s3, l3))?;
        let (b, s, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; b * s];
        for_rows(&mut out, s, |r, o| {
            additive_row(
                o,
                &keys[r * s * d..(r + 1) * s * d],
                &q[r * d..(r + 1) * d],
                v,
            )
        });
        Ok((CpuStorage::F32(out), Shape::from((b, s))))
    }

    fn bwd(
        &self,
        keys: &Tensor,
        q: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, s, d) = keys.dims3()?;
        // q and the scores' gradient side by side: the backward op has three inputs.
        let q_grad = Tensor::cat(&[q, &grad.contiguous()?], 1)?;
        let packed = keys.apply_op3_no_bwd(&q_grad, v, &AdditiveBackward)?;
        let dk = packed.narrow(0, 0, b * s * d)?.reshape((b, s, d))?;
        let dq = packed.narrow(0, b * s * d, b * d)?.reshape((b, d))?;
        let dv = packed.narrow(0, b * s * d + b * d, d)?;
        Ok((Some(dk), Some(dq), Some(dv)))
    }
}

/// `(keys, [q | ∂scores], v) → [∂K (b·s·H) | ∂q (b·H) | ∂v (H)]` of [`AdditiveScores`].
struct AdditiveBackward;

impl CustomOp3 for AdditiveBackward {
    fn name(&self) -> &'static str {
        "wick-additive-scores-backward"
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
        let what = self.name();
        let (keys, qg, v) = slices3(what, (s1, l1), (s2, l2), (s3, l3))?;
        let (b, s, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; b * s * d + b * d + d];
        let (dk, rest) = out.split_at_mut(b * s * d);
        let (dq, dv) = rest.split_at_mut(b * d);
        // Sentences in parallel, each with its own ∂v, summed at the end.
        use rayon::prelude::*;
        let partial: Vec<Vec<f32>> = dk
            .par_chunks_mut(s * d)
            .zip(dq.par_chunks_mut(d))
            .enumerate()
            .map(|(r, (dkr, dqr))| {
                let mut dvr = vec![0f32; d];
                let row = &qg[r * (d + s)..(r + 1) * (d + s)];
                let (q, g) = row.split_at(d);
                additive_backward_row(
                    dkr,
                    dqr,
                    &mut dvr,
                    &keys[r * s * d..(r + 1) * s * d],
                    q,
                    v,
                    g,
                );
                dvr
            })
            .collect();
        for p in partial {
            for (o, x) in dv.iter_mut().zip(p) {
                *o += x;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(b * s * d + b * d + d)))
    }
}

/// Additive attention scores `Σ_k v_k tanh(K[b, s, k] + q[b, k])`, differentiable in all three
/// operands: the `(b, s, H)` tanh that composed ops would materialise (and keep for backward)
/// at every decoding step is never stored, and backward recomputes it.
///
/// # Shapes
/// keys `(b, s, H)`, q `(b, H)`, v `(H,)` → `(b, s)`.
pub fn additive_scores(keys: &Tensor, q: &Tensor, v: &Tensor) -> Result<Tensor> {
    crate::enter("additive-scores", &[keys, q, v])?;
    let (b, _, d) = keys.dims3()?;
    if q.dims2()? != (b, d) || v.dims1()? != d {
        bail!(
            "additive scores: keys {:?}, query {:?}, v {:?}",
            keys.dims(),
            q.dims(),
            v.dims()
        )
    }
    keys.contiguous()?
        .apply_op3(&q.contiguous()?, &v.contiguous()?, AdditiveScores)
}
