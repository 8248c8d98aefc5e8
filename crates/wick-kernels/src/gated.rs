//! ConvS2S's elementwise parts as single autograd nodes: the gated linear unit and weight
//! normalisation. Composed, each is several Candle ops (narrows, a sigmoid, products, a
//! norm), every one with its own buffer forward and its own gradient buffer backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;

use crate::simd::{fast_exp, lane_dot};
use crate::storage::{for_rows, slice, with_last_dim};

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// `[a | b]` → `a ⊙ σ(b)` for one row.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn glu_row(out: &mut [f32], x: &[f32]) {
    let (a, b) = x.split_at(out.len());
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a * sigmoid(b);
    }
}

/// Backward of [`glu_row`]: `∂[a | b]` from `dy`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn glu_backward_row(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    let h = dy.len();
    let (a, b) = x.split_at(h);
    let (da, db) = dx.split_at_mut(h);
    for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db.iter_mut()).zip(a).zip(b).zip(dy) {
        let s = sigmoid(b);
        *da = g * s;
        *db = g * a * s * (1.0 - s);
    }
}

struct Glu;

impl CustomOp1 for Glu {
    fn name(&self) -> &'static str {
        "wick-glu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "glu")?;
        let dims = l.shape().dims();
        let w = *dims.last().unwrap_or(&0);
        let h = w / 2;
        let mut out = vec![0f32; x.len() / 2];
        for_rows(&mut out, h, |r, o| glu_row(o, &x[r * w..(r + 1) * w]));
        Ok((CpuStorage::F32(out), with_last_dim(l, h)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GluBackward)?))
    }
}

/// `(x, ∂y) → ∂x` of [`Glu`].
struct GluBackward;

impl CustomOp2 for GluBackward {
    fn name(&self) -> &'static str {
        "wick-glu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "glu backward")?;
        let dy = slice(s2, l2, "glu backward")?;
        let w = *l1.shape().dims().last().unwrap_or(&0);
        let h = w / 2;
        let mut dx = vec![0f32; x.len()];
        for_rows(&mut dx, w, |r, d| {
            glu_backward_row(d, &x[r * w..(r + 1) * w], &dy[r * h..(r + 1) * h])
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The gated linear unit over the last dimension: `[a | b]` → `a ⊙ σ(b)`, differentiable.
///
/// # Shapes
/// `(…, 2h)` → `(…, h)`.
pub fn glu(x: &Tensor) -> Result<Tensor> {
    crate::enter("glu", &[x])?;
    let w = x.dims().last().copied().unwrap_or(0);
    if w == 0 || w % 2 != 0 {
        bail!(
            "glu: the last dimension must be even and positive, got {:?}",
            x.dims()
        )
    }
    x.contiguous()?.apply_op1(Glu)
}

/// `W = g ⊙ V / ‖V‖` for one row; returns nothing (the row of W is written).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn weight_norm_row(w: &mut [f32], v: &[f32], g: f32) {
    let scale = g / lane_dot(v, v).sqrt();
    for (w, &x) in w.iter_mut().zip(v) {
        *w = x * scale;
    }
}

/// Backward of [`weight_norm_row`]: with `u = V/‖V‖` and `s = u·∂W`, `∂g = s` and
/// `∂V = (g/‖V‖)(∂W − u s)`. Writes `∂V` into `dv` and returns `∂g`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn weight_norm_backward_row(dv: &mut [f32], v: &[f32], g: f32, dw: &[f32]) -> f32 {
    let norm = lane_dot(v, v).sqrt();
    let s = lane_dot(v, dw) / norm;
    let k = g / norm;
    for ((o, &x), &d) in dv.iter_mut().zip(v).zip(dw) {
        *o = k * (d - x / norm * s);
    }
    s
}

struct WeightNorm;

impl CustomOp2 for WeightNorm {
    fn name(&self) -> &'static str {
        "wick-weight-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = slice(s1, l1, "weight norm")?;
        let g = slice(s2, l2, "weight norm")?;
        let (rows, d) = l1.shape().dims2()?;
        if g.len() != rows {
            bail!("weight norm: {} gains for {rows} rows", g.len())
        }
        let mut w = vec![0f32; rows * d];
        for_rows(&mut w, d, |r, o| {
            weight_norm_row(o, &v[r * d..(r + 1) * d], g[r])
        });
        Ok((CpuStorage::F32(w), l1.shape().clone()))
    }

    fn bwd(
        &self,
        v: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = v.dims2()?;
        // [∂V | ∂g] per row.
        let packed = v.apply_op2_no_bwd(
            &Tensor::cat(&[&grad.contiguous()?, &g.reshape((rows, 1))?], 1)?,
            &WeightNormBackward,
        )?;
        Ok((
            Some(packed.narrow(1, 0, d)?),
            Some(packed.narrow(1, d, 1)?.reshape(g.shape())?),
        ))
    }
}

/// `(V, [∂W | g]) → [∂V | ∂g]` of [`WeightNorm`].
struct WeightNormBackward;

impl CustomOp2 for WeightNormBackward {
    fn name(&self) -> &'static str {
        "wick-weight-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = slice(s1, l1, "weight norm backward")?;
        let dwg = slice(s2, l2, "weight norm backward")?;
        let (rows, d) = l1.shape().dims2()?;
        let mut out = vec![0f32; rows * (d + 1)];
        for_rows(&mut out, d + 1, |r, o| {
            let row = &dwg[r * (d + 1)..(r + 1) * (d + 1)];
            let (dv, dg) = o.split_at_mut(d);
            dg[0] = weight_norm_backward_row(dv, &v[r * d..(r + 1) * d], row[d], &row[..d]);
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, d + 1))))
    }
}

/// Weight normalisation `W = g ⊙ V / ‖V‖` row by row (Salimans & Kingma, 2016),
/// differentiable in `V` and `g`.
///
/// # Shapes
/// v `(out, in)`, g `(out, 1)` or `(out,)` → `(out, in)`.
pub fn weight_norm(v: &Tensor, g: &Tensor) -> Result<Tensor> {
    crate::enter("weight-norm", &[v, g])?;
    let rows = v.dims2()?.0;
    if g.elem_count() != rows {
        bail!(
            "weight norm: gains {:?} for weights {:?}",
            g.dims(),
            v.dims()
        )
    }
    v.contiguous()?.apply_op2(&g.contiguous()?, WeightNorm)
}

/// The `k` shifted copies of a sequence side by side, zeros where a shift leaves it: the
/// input of a 1-D convolution as one product. Composed, that is a padded copy, `k` narrows
/// and a concatenation forward, and as many zero-padded gradient buffers backward.
struct Unfold {
    kernel: usize,
    left: usize,
}

impl Unfold {
    /// `out[i, j·h + c] = x[i + j − left, c]` for one sentence (zeros outside).
    fn sentence(&self, out: &mut [f32], x: &[f32], h: usize) {
        let t = x.len() / h;
        let k = self.kernel;
        for (i, row) in out.chunks_exact_mut(k * h).enumerate() {
            for (j, tap) in row.chunks_exact_mut(h).enumerate() {
                match (i + j).checked_sub(self.left) {
                    Some(p) if p < t => tap.copy_from_slice(&x[p * h..(p + 1) * h]),
                    _ => tap.fill(0.0),
                }
            }
        }
    }

    /// The gradient of [`Self::sentence`]: `dx[p, c] = Σ_j dout[p − j + left, j·h + c]`.
    fn sentence_backward(&self, dx: &mut [f32], dout: &[f32], h: usize) {
        let t = dx.len() / h;
        let k = self.kernel;
        dx.fill(0.0);
        for (i, row) in dout.chunks_exact(k * h).enumerate() {
            for (j, tap) in row.chunks_exact(h).enumerate() {
                if let Some(p) = (i + j).checked_sub(self.left)
                    && p < t
                {
                    for (d, &g) in dx[p * h..(p + 1) * h].iter_mut().zip(tap) {
                        *d += g;
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "wick-unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "unfold")?;
        let (b, t, h) = l.shape().dims3()?;
        let mut out = vec![0f32; b * t * self.kernel * h];
        for_rows(&mut out, t * self.kernel * h, |r, o| {
            self.sentence(o, &x[r * t * h..(r + 1) * t * h], h)
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, self.kernel * h))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h) = x.dims3()?;
        let dx = grad.contiguous()?.apply_op1_no_bwd(&Fold {
            unfold: Unfold {
                kernel: self.kernel,
                left: self.left,
            },
            h,
        })?;
        Ok(Some(dx))
    }
}

/// `(b, t, k·h) → (b, t, h)`: the gradient of [`Unfold`].
struct Fold {
    unfold: Unfold,
    h: usize,
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "wick-unfold-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "unfold backward")?;
        let (b, t, w) = l.shape().dims3()?;
        let h = self.h;
        let mut dx = vec![0f32; b * t * h];
        for_rows(&mut dx, t * h, |r, d| {
            self.unfold
                .sentence_backward(d, &g[r * t * w..(r + 1) * t * w], h)
        });
        Ok((CpuStorage::F32(dx), Shape::from((b, t, h))))
    }
}

/// The input of a 1-D convolution of `kernel` taps as one matrix: position `i`'s row holds
/// `x[i − left ..= i − left + kernel − 1]` side by side (zeros beyond the sequence), so that
/// the convolution is one product with a `(out, kernel·h)` weight. Differentiable.
///
/// # Shapes
/// `(b, t, h)` → `(b, t, kernel·h)`.
pub fn unfold(x: &Tensor, kernel: usize, left: usize) -> Result<Tensor> {
    crate::enter("unfold", &[x])?;
    if kernel == 0 || left >= kernel {
        bail!("unfold: {left} zeros on the left of a {kernel}-tap window")
    }
    x.contiguous()?.apply_op1(Unfold { kernel, left })
}
