//! The affine layer `y = x·Wᵀ + b` as one autograd node, optionally with the feed-forward's
//! ReLU and the dropout after it folded in.
//!
//! Composed from Candle ops the layer is five nodes (reshape, transpose, matmul, broadcast
//! add, reshape), each of which costs a zeroed gradient buffer and an addition in backward.
//! Here forward is one `gemm` call with the bias pre-loaded into the output (then the ReLU
//! and the mask in place), and backward three products: dX = dY·W, dW = dYᵀ·X, db = Σ dY.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::gemm::{gemm_into, matmul};
use crate::storage::{CHUNK, slice, strided_2d, with_last_dim};

/// `y = x·Wᵀ (+ b)` (then `max(y, 0)` with `relu`, then `⊙ mask` with a dropout mask) over the
/// rows of x, any rank: x `(…, in)`, W `(out, in)`, b `(out,)`, mask `rows × out` values.
struct AffineOp {
    relu: bool,
    /// Only with `relu`: the dropout after it, `0` or `1/(1-p)` per output value.
    mask: Option<Arc<Vec<f32>>>,
}

/// Column sums of a `(rows, n)` matrix: the bias gradient. Candle's `sum(0)` walks the
/// matrix element by element on one thread; this adds whole rows (vectorised), on row blocks
/// in parallel.
struct ColumnSum;

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "wick-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "column sum")?;
        let (_, n) = l.shape().dims2()?;
        // Fixed blocks, partial sums added in block order: the result does not depend on how
        // rayon schedules the blocks, so training stays bit-for-bit reproducible.
        const BLOCK_ROWS: usize = 64;
        let add_rows = |acc: &mut [f32], chunk: &[f32]| {
            for row in chunk.chunks(n) {
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
        };
        let partials: Vec<Vec<f32>> = g
            .par_chunks(BLOCK_ROWS * n)
            .map(|chunk| {
                let mut acc = vec![0f32; n];
                add_rows(&mut acc, chunk);
                acc
            })
            .collect();
        let mut sum = vec![0f32; n];
        for p in &partials {
            add_rows(&mut sum, p);
        }
        Ok((CpuStorage::F32(sum), Shape::from(n)))
    }
}

/// The ReLU's backward: dY where the (rectified) output is positive, else 0; with the
/// dropout mask that followed the ReLU, dY ⊙ mask there. The output is positive exactly
/// where the ReLU passed and the mask kept, so the output alone tells both.
struct ReluMask(Option<Arc<Vec<f32>>>);

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "wick-relu-mask"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(sy, ly, "relu output")?;
        let g = slice(sg, lg, "relu gradient")?;
        let mut out = vec![0f32; y.len()];
        let jobs = out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK));
        match &self.0 {
            None => jobs.zip(g.par_chunks(CHUNK)).for_each(|((o, y), g)| {
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = if y > 0.0 { g } else { 0.0 };
                }
            }),
            Some(mask) => {
                if mask.len() != y.len() {
                    candle_core::bail!("relu-dropout: mask of {} for {}", mask.len(), y.len())
                }
                jobs.zip(g.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                    .for_each(|((o, y), (g, m))| {
                        for (((o, &y), &g), &m) in o.iter_mut().zip(y).zip(g).zip(m) {
                            *o = if y > 0.0 { g * m } else { 0.0 };
                        }
                    })
            }
        }
        Ok((CpuStorage::F32(out), ly.shape().clone()))
    }
}

impl AffineOp {
    fn forward(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(sx, lx, "linear input")?;
        // W may be a transposed view of an `(in, out)` buffer (a layer laid out for decoding
        // off the panel path).
        let (w, (w_rs, w_cs)) = strided_2d(sw, lw)?;
        let (d_out, d_in) = lw.shape().dims2()?;
        if lx.dims().last() != Some(&d_in) {
            bail!("linear: input {:?} does not end in {d_in}", lx.dims())
        }
        let rows = x.len() / d_in.max(1);
        let mut y = Vec::with_capacity(rows * d_out);
        match bias {
            Some(b) if b.len() != d_out => bail!("linear: bias of {} for {d_out} outputs", b.len()),
            Some(b) => (0..rows).for_each(|_| y.extend_from_slice(b)),
            None => y.resize(rows * d_out, 0.0),
        }
        // y = y + x·Wᵀ with y holding the bias; Wᵀ is read through W's strides.
        gemm_into(
            &mut y,
            (rows, d_out, d_in),
            x,
            (d_in, 1),
            w,
            (w_cs, w_rs),
            true,
        )?;
        match (&self.mask, self.relu) {
            (Some(mask), true) => {
                if mask.len() != y.len() {
                    bail!("relu-dropout: mask of {} for {}", mask.len(), y.len())
                }
                // The same arithmetic as the ReLU followed by dropout's product.
                y.par_chunks_mut(CHUNK)
                    .zip(mask.par_chunks(CHUNK))
                    .for_each(|(y, m)| {
                        for (v, &m) in y.iter_mut().zip(m) {
                            *v = v.max(0.0) * m;
                        }
                    });
            }
            (None, true) => {
                for v in &mut y {
                    *v = v.max(0.0);
                }
            }
            (Some(_), false) => bail!("linear: a dropout mask needs the ReLU"),
            (None, false) => {}
        }
        Ok((CpuStorage::F32(y), with_last_dim(lx, d_out)))
    }

    /// dX, dW and db (the column sums of dY).
    fn backward(&self, x: &Tensor, w: &Tensor, y: &Tensor, grad: &Tensor) -> Result<[Tensor; 3]> {
        // Detached: gradients must not carry a graph, or anything built from them (the
        // optimizer's moments) would keep every step's activations alive.
        let (x, w) = (x.detach(), w.detach());
        let (d_out, d_in) = w.dims2()?;
        let rows = x.elem_count() / d_in;
        let grad = if self.relu {
            y.detach()
                .apply_op2_no_bwd(&grad.contiguous()?, &ReluMask(self.mask.clone()))?
        } else {
            grad.detach()
        };
        let g = grad.reshape((rows, d_out))?; // (rows, out)
        let x2 = x.reshape((rows, d_in))?; // (rows, in)
        let dx = matmul(&g, &w)?.reshape(x.shape())?;
        let dw = matmul(&g.t()?, &x2)?; // (out, in)
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok([dx, dw, db])
    }
}

impl CustomOp2 for AffineOp {
    fn name(&self) -> &'static str {
        "wick-affine"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(sx, lx, sw, lw, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.backward(x, w, y, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "wick-affine"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = slice(sb, lb, "linear bias")?;
        self.forward(sx, lx, sw, lw, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.backward(x, w, y, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `y = x·Wᵀ + b`, then `max(y, 0)` with `relu`, then `y ⊙ mask` with a dropout mask (only
/// after a ReLU: `mask` holds `0` or `1/(1-p)` per output value). One autograd node,
/// differentiable in x, W and b. W may be a transposed view.
///
/// # Shapes
/// x `(…, in)`, w `(out, in)`, b `(out,)` → `(…, out)`; mask: as many values as the output.
pub fn affine(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    relu: bool,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    crate::enter("affine", &[x, w])?;
    let op = AffineOp {
        relu,
        mask: mask.map(Arc::new),
    };
    let x = x.contiguous()?;
    match b {
        Some(b) => {
            crate::enter("affine", &[b])?;
            x.apply_op3(w, b, op)
        }
        None => x.apply_op2(w, op),
    }
}
