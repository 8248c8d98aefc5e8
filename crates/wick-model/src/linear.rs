//! Affine layer `y = x·Wᵀ + b` with Xavier-uniform weights and zero bias.
//!
//! On the CPU in f32 the layer is one autograd node: a custom op that calls the `gemm`
//! kernel (the one Candle's matmul uses) with the bias pre-loaded into the output, and whose
//! backward is three tensor ops (dX = dY·W, dW = dYᵀ·X, db = Σ dY). Composed from Candle ops
//! it is five nodes (reshape, transpose, matmul, broadcast add, reshape), each of which costs a
//! zeroed gradient buffer and an addition in backward. [`Linear::forward_relu`] folds the
//! feed-forward ReLU into the same node (applied in place forward, a mask on dY backward), and
//! [`Linear::forward_relu_dropout`] the dropout that follows it as well.
//! [`Linear::forward_reference`] is the composed form the tests hold the op to.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::init::xavier_uniform;
use crate::ops::{gemm_into, slice, strided_2d};

/// `y = x·Wᵀ + b` (then `max(y, 0)` with `relu`, then `⊙ mask` with a dropout mask) over the
/// rows of x, any rank: x `(…, in)`, W `(out, in)`, b `(out,)`, mask `rows × out` values.
struct AffineOp {
    relu: bool,
    /// Only with `relu`: the feed-forward's dropout, `0` or `1/(1-p)` per output value.
    mask: Option<Arc<Vec<f32>>>,
}

/// Elements per parallel job of the elementwise passes below.
const CHUNK: usize = 1 << 14;

/// Column sums of a `(rows, n)` matrix: the bias gradient. Candle's `sum(0)` walks the
/// matrix element by element on one thread; this adds whole rows (vectorised), on row blocks
/// in parallel.
struct ColumnSum;

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "wick-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
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

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "wick-linear"
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
        let x = slice(sx, lx, "linear input")?;
        // W may be a transposed view of an `(in, out)` buffer (`Linear::for_decoding`).
        let (w, (w_rs, w_cs)) = strided_2d(sw, lw)?;
        let b = slice(sb, lb, "linear bias")?;
        let (d_out, d_in) = lw.shape().dims2()?;
        let rows = x.len() / d_in;
        let mut y = Vec::with_capacity(rows * d_out);
        for _ in 0..rows {
            y.extend_from_slice(b);
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
                    candle_core::bail!("relu-dropout: mask of {} for {}", mask.len(), y.len())
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
            (Some(_), false) => candle_core::bail!("linear: a dropout mask needs the ReLU"),
            (None, false) => {}
        }
        let mut dims = lx.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = d_out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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
        let dx = crate::ops::matmul(&g, &w)?.reshape(x.shape())?;
        let dw = crate::ops::matmul(&g.t()?, &x2)?; // (out, in)
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`, as in PyTorch.
    weight: Tensor,
    /// `(out,)`
    bias: Option<Tensor>,
    /// The weight as [`crate::panel::pack`]ed panels, in copies made for decoding on the CPU.
    panels: Option<Tensor>,
}

impl Linear {
    pub fn new(d_in: usize, d_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", xavier_uniform(d_in, d_out))?;
        let bias = if bias {
            Some(vb.get_with_hints(d_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            panels: None,
        })
    }

    /// A layer over existing tensors: weight `(out, in)`, bias `(out,)`.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            panels: None,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight packed for decoding (`(⌈out/64⌉, in, 64)`, [`crate::panel::pack`]), in a
    /// CPU copy made by [`Linear::for_decoding`].
    pub fn panels(&self) -> Option<&Tensor> {
        self.panels.as_ref()
    }

    /// A copy of the layer for inference (decoding steps, and the encoder before them), with
    /// the weight laid out in advance. `gemm` packs an operand that is not in its kernel's
    /// layout on every call, and with the few rows of a decoding step that packing of W took
    /// a fifth of a step (perf, small preset, greedy, one thread). On the CPU in f32 the copy
    /// holds W packed once into panels ([`crate::panel`]); elsewhere, W stored transposed,
    /// which `gemm` reads without packing. Later updates to the trained weight are not seen by
    /// the copy. A layer already packed is returned as it is (a clone).
    pub fn for_decoding(&self) -> Result<Self> {
        if self.panels.is_some() {
            return Ok(self.clone());
        }
        if self.weight.device().is_cpu() && self.weight.dtype() == DType::F32 {
            return Ok(Self {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
                panels: Some(crate::panel::pack(&self.weight)?),
            });
        }
        Ok(Self {
            weight: crate::ops::transpose_contiguous(&self.weight)?.t()?,
            bias: self.bias.clone(),
            panels: None,
        })
    }
}

impl Linear {
    /// The layer composed from Candle ops (devices without the op, layers without a bias, and
    /// the tests).
    pub fn forward_reference(&self, xs: &Tensor) -> Result<Tensor> {
        let (d_out, d_in) = self.weight.dims2()?;
        let dims = xs.dims().to_vec();
        if dims.last() != Some(&d_in) {
            candle_core::bail!("linear: input {dims:?} does not end in {d_in}")
        }
        let rows = xs.elem_count() / d_in;
        let x2 = xs.reshape((rows, d_in))?; // (rows, in)
        let y = x2.matmul(&self.weight.t()?)?; // (rows, out)
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = d_out;
        y.reshape(out_dims)
    }
}

impl Linear {
    /// `mask` only with `relu`: dropout after the ReLU (`0` or `1/(1-p)` per output value).
    fn forward_op(&self, xs: &Tensor, relu: bool, mask: Option<Vec<f32>>) -> Result<Tensor> {
        let (d_out, d_in) = self.weight.dims2()?;
        if let Some(mask) = mask {
            let fused = xs.device().is_cpu()
                && xs.dtype() == DType::F32
                && self.weight.dtype() == DType::F32
                && xs.dims().last() == Some(&d_in)
                && self.panels.is_none();
            return match &self.bias {
                Some(b) if relu && fused => xs.contiguous()?.apply_op3(
                    &self.weight,
                    b,
                    AffineOp {
                        relu,
                        mask: Some(Arc::new(mask)),
                    },
                ),
                _ => {
                    let y = self.forward_op(xs, relu, None)?;
                    let mask =
                        Tensor::from_vec(mask, y.shape(), y.device())?.to_dtype(y.dtype())?;
                    y.mul(&mask)
                }
            };
        }
        if let Some(panels) = &self.panels
            && xs.device().is_cpu()
            && xs.dtype() == DType::F32
        {
            return crate::panel::affine(xs, panels, self.bias.as_ref(), d_out, relu);
        }
        let fused = xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && xs.dims().last() == Some(&d_in);
        match &self.bias {
            Some(b) if fused => {
                xs.contiguous()?
                    .apply_op3(&self.weight, b, AffineOp { relu, mask: None })
            }
            _ if relu => self.forward_reference(xs)?.relu(),
            _ => self.forward_reference(xs),
        }
    }

    /// `max(x·Wᵀ + b, 0)`, one autograd node on the CPU.
    ///
    /// # Shapes
    /// `(…, in)` → `(…, out)`
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_op(xs, true, None)
    }

    /// `max(x·Wᵀ + b, 0) ⊙ mask`: the ReLU followed by dropout with a drawn mask
    /// ([`crate::dropout::Dropout::draw_mask`], one value per output element), one autograd
    /// node on the CPU. Folding the dropout in saves its pass over the `(rows, out)` hidden
    /// values forward and backward, and the zeroed gradient buffer and sum Candle's backward
    /// spends on every node's input.
    ///
    /// # Shapes
    /// `(…, in)` → `(…, out)`; mask: as many values as the output.
    pub fn forward_relu_dropout(&self, xs: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
        self.forward_op(xs, true, Some(mask))
    }
}

impl Module for Linear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`; leading dims are flattened into one matmul.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_op(xs, false, None)
    }
}
