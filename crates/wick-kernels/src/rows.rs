//! Row kernels over the last dimension: softmax (with its backward), and decoding's
//! log-softmax and argmax over the vocabulary.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;

use crate::simd::{exp_shifted, first_equal, lane_max};
use crate::storage::{for_rows, slice};

/// `y = softmax(x)` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_row(y: &mut [f32], x: &[f32]) {
    let inv = 1.0 / exp_shifted(y, x, lane_max(x));
    for v in y.iter_mut() {
        *v *= inv;
    }
}

/// A same-shape output computed row by row over the last dimension: `row(out_row, in_row)`.
fn map_last_dim(
    s: &CpuStorage,
    l: &Layout,
    what: &str,
    row: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let x = slice(s, l, what)?;
    let d = l.dims().last().copied().unwrap_or(1).max(1);
    let mut out = vec![0f32; x.len()];
    for_rows(&mut out, d, |i, y| row(y, &x[i * d..(i + 1) * d]));
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "wick-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_last_dim(s, l, "softmax", softmax_row)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxBackward)?))
    }
}

/// `dx = y ⊙ (dy − Σ_j y_j dy_j)` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "wick-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "softmax backward")?;
        let dy = slice(s2, l2, "softmax backward")?;
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, d, |i, dx| {
            let (yr, dyr) = (&y[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
            for ((o, &yj), &gj) in dx.iter_mut().zip(yr).zip(dyr) {
                *o = yj * (gj - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("softmax", &[xs])?;
    xs.contiguous()?.apply_op1(Softmax)
}

/// Index of the first maximum of a row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn row_argmax(x: &[f32]) -> u32 {
    first_equal(x, lane_max(x)).unwrap_or(0) as u32
}

struct Argmax;

impl CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "wick-argmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "argmax")?;
        let dims = l.dims();
        let Some((&d, rows)) = dims.split_last() else {
            bail!("argmax: needs at least one dimension")
        };
        if d == 0 {
            bail!("argmax: empty last dimension")
        }
        let out: Vec<u32> = x.chunks_exact(d).map(row_argmax).collect();
        Ok((CpuStorage::U32(out), Shape::from(rows.to_vec())))
    }
}

/// Index of the first maximum along the last dimension (greedy decoding's next token), as
/// Candle's `argmax(D::Minus1)` but in one vectorised pass (Candle's reduction took ~9% of
/// a greedy decoding step). No gradient.
///
/// # Shapes
/// `(…, V)` f32 → `(…)` u32.
pub fn argmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("argmax", &[xs])?;
    xs.contiguous()?.apply_op1_no_bwd(&Argmax)
}

/// `y = x − log Σ e^x` of one row.
#[multiversion(targets("x86_64+avx2+fma"))]
fn log_softmax_row(y: &mut [f32], x: &[f32]) {
    let max = lane_max(x);
    let lse = max + exp_shifted(y, x, max).ln();
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x - lse;
    }
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "wick-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_last_dim(s, l, "log-softmax", log_softmax_row)
    }
}

/// Log-softmax over the last dimension for beam search: one fused pass per row where
/// `candle_nn::ops::log_softmax` makes five full-size tensors. No gradient.
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    crate::enter("log-softmax", &[xs])?;
    xs.contiguous()?.apply_op1_no_bwd(&LogSoftmax)
}

/// The `k` largest values of `row` with their indices into `best`, largest first; equal
/// values keep the lower index first (as [`argmax`] does, so that a beam of 1 picks greedy's
/// token), and NaNs are skipped. One pass with a short sorted list: a value enters only if it
/// beats the current k-th, which after the first few hundred entries is rare.
///
/// The plain definition: beam search's reference path runs it on log-probabilities, and
/// [`log_softmax_top_k`] is held to it.
pub fn top_k(row: &[f32], k: usize, best: &mut Vec<(f32, u32)>) {
    best.clear();
    if k == 0 {
        return;
    }
    for (j, &x) in row.iter().enumerate() {
        if x.is_nan() || (best.len() == k && x <= best[k - 1].0) {
            continue;
        }
        insert_ranked(best, k, x, j);
    }
}

/// Puts `(x, j)` after every entry ≥ x (so that ties stay in index order), keeping `k`.
#[inline(always)]
fn insert_ranked(best: &mut Vec<(f32, u32)>, k: usize, x: f32, j: usize) {
    let at = best.partition_point(|&(y, _)| y >= x);
    best.insert(at, (x, j as u32));
    best.truncate(k);
}

/// Elements the fused top-k tests against the running k-th value at once.
const SCAN: usize = 16;

/// [`top_k`] of the row's log-softmax `x − lse` (the values [`log_softmax`] gives, bit for
/// bit), without writing the row out: `exps` is scratch for `e^(x − max)`. Past the first
/// `k` entries a block of [`SCAN`] values is compared with the k-th as a whole, which
/// vectorizes; the scalar `top_k` over a copied row of log-probabilities took as long as
/// the log-softmax itself.
#[multiversion(targets("x86_64+avx2+fma"))]
fn log_softmax_top_k_row(x: &[f32], k: usize, exps: &mut Vec<f32>, best: &mut Vec<(f32, u32)>) {
    best.clear();
    if k == 0 || x.is_empty() {
        return;
    }
    exps.resize(x.len(), 0.0);
    let max = lane_max(x);
    let lse = max + exp_shifted(exps, x, max).ln();
    let mut j = 0;
    while j < x.len() && best.len() < k {
        let y = x[j] - lse;
        if !y.is_nan() {
            insert_ranked(best, k, y, j);
        }
        j += 1;
    }
    if best.len() < k {
        return;
    }
    let mut kth = best[k - 1].0;
    let blocks = x[j..].chunks_exact(SCAN);
    let tail = j + blocks.len() * SCAN;
    for (b, block) in blocks.enumerate() {
        let mut hit = false;
        for &v in block {
            hit |= v - lse > kth;
        }
        if hit {
            for (i, &v) in block.iter().enumerate() {
                let y = v - lse;
                if y > kth {
                    insert_ranked(best, k, y, j + b * SCAN + i);
                    kth = best[k - 1].0;
                }
            }
        }
    }
    for (i, &v) in x[tail..].iter().enumerate() {
        let y = v - lse;
        if y > kth {
            insert_ranked(best, k, y, tail + i);
            kth = best[k - 1].0;
        }
    }
}

/// For each row of `xs`, the `k` largest log-softmax values with their indices, largest
/// first (ties: lower index first; fewer than `k` where the row has fewer non-NaN values):
/// beam search's candidates in one pass per row, with neither the `(rows, V)` log-softmax
/// nor a copy of it to the host. Equal to [`log_softmax`] then [`top_k`].
///
/// # Shapes
/// `(…, V)` f32 → one list per row of the leading dimensions.
pub fn log_softmax_top_k(xs: &Tensor, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
    crate::enter("log-softmax-top-k", &[xs])?;
    let xs = xs.contiguous()?;
    let v = xs.dims().last().copied().unwrap_or(1);
    let (storage, layout) = xs.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        bail!("log-softmax top-k: expected a CPU tensor")
    };
    let x = slice(s, layout, "log-softmax top-k")?;
    if v == 0 {
        bail!("log-softmax top-k: empty last dimension")
    }
    let mut exps = Vec::new();
    Ok(x.chunks_exact(v)
        .map(|row| {
            let mut best = Vec::with_capacity(k + 1);
            log_softmax_top_k_row(row, k, &mut exps, &mut best);
            best
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Values from a small set, so that ties are common.
    fn tied_row(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 24) % 40) as f32 * -0.25
            })
            .collect()
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let row = tied_row(500, 12345);
        let mut want: Vec<(f32, u32)> = row
            .iter()
            .enumerate()
            .map(|(j, &x)| (x, j as u32))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut best = Vec::new();
        for k in [1, 2, 10, 37] {
            top_k(&row, k, &mut best);
            assert_eq!(best, want[..k], "k = {k}");
        }
        top_k(&row[..3], 10, &mut best);
        assert_eq!(best.len(), 3);
        top_k(&[f32::NAN, -1.0, f32::NAN, -0.5], 2, &mut best);
        assert_eq!(best, [(-0.5, 3), (-1.0, 1)]);
    }

    /// The fused kernel against the log-softmax kernel followed by the plain top-k, bit for
    /// bit: rows with many ties, rows shorter than k or than a scan block, NaN and −∞
    /// entries, a row whose largest values sit at the end, and k = 0.
    #[test]
    fn fused_log_softmax_top_k_equals_log_softmax_then_top_k() -> Result<()> {
        let dev = Device::Cpu;
        let mut rows: Vec<Vec<f32>> = vec![
            tied_row(6000, 1),
            tied_row(37, 2),
            tied_row(5, 3),
            (0..1000).map(|i| i as f32 * 1e-3).collect(),
            {
                let mut r = tied_row(300, 4);
                r[7] = f32::NAN;
                r[100] = f32::NEG_INFINITY;
                r[299] = 5.0;
                r
            },
        ];
        let state = Tensor::randn(0f32, 3.0, (3, 777), &dev)?.to_vec2::<f32>()?;
        rows.extend(state);
        for row in &rows {
            let t = Tensor::new(row.as_slice(), &dev)?.unsqueeze(0)?;
            let lp = log_softmax(&t)?.squeeze(0)?.to_vec1::<f32>()?;
            for k in [0, 1, 2, 10, 40] {
                let mut want = Vec::new();
                top_k(&lp, k, &mut want);
                let got = log_softmax_top_k(&t, k)?;
                assert_eq!(got.len(), 1);
                let same = got[0].len() == want.len()
                    && got[0]
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.0.to_bits() == b.0.to_bits() && a.1 == b.1);
                assert!(
                    same,
                    "k {k}, row of {}: {:?} vs {:?}",
                    row.len(),
                    got[0],
                    want
                );
            }
        }
        // Rows of a batch are independent; leading dimensions flatten.
        let t = Tensor::randn(0f32, 1.0, (2, 3, 50), &dev)?;
        let got = log_softmax_top_k(&t, 4)?;
        assert_eq!(got.len(), 6);
        for (i, g) in got.iter().enumerate() {
            let row = t.flatten_to(1)?.get(i)?.unsqueeze(0)?;
            assert_eq!(g, &log_softmax_top_k(&row, 4)?[0]);
        }
        Ok(())
    }
}
