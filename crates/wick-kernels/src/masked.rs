//! Dropout's product with a drawn mask, and the residual sum `r + mask ⊙ x` of a block, each as
//! one autograd node. The masks are drawn by the caller (`wick_model`'s dropout streams), so
//! these ops are deterministic.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::storage::{CHUNK, slice};

/// Elementwise product with a fixed mask; its backward is the same product. One node where
/// Candle's `mul` would also build (and accumulate) the unused gradient of the mask.
struct MaskMul(Arc<Vec<f32>>);

impl CustomOp1 for MaskMul {
    fn name(&self) -> &'static str {
        "wick-mask-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "dropout")?;
        if x.len() != self.0.len() {
            bail!("dropout: mask of {} for {} values", self.0.len(), x.len())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(self.0.par_chunks(CHUNK)))
            .for_each(|(o, (x, m))| {
                for ((o, x), m) in o.iter_mut().zip(x).zip(m) {
                    *o = x * m;
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.detach()
                .contiguous()?
                .apply_op1_no_bwd(&MaskMul(self.0.clone()))?,
        ))
    }
}

/// `residual + x` (with a mask: `residual + mask ⊙ x`): a residual block's sum, and its
/// branch's dropout, as one node (two with Candle's ops, each with its own output, gradient
/// and accumulation). Also keeps the sums of inference off Candle's own thread pool.
struct MaskedAdd(Option<Arc<Vec<f32>>>);

impl CustomOp2 for MaskedAdd {
    fn name(&self) -> &'static str {
        "wick-masked-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let r = slice(s1, l1, "residual sum")?;
        let x = slice(s2, l2, "residual branch")?;
        if r.len() != x.len() || self.0.as_ref().is_some_and(|m| m.len() != x.len()) {
            bail!(
                "residual sum: residual of {}, branch of {}, mask of {:?} values",
                r.len(),
                x.len(),
                self.0.as_ref().map(|m| m.len())
            )
        }
        let mut out = vec![0f32; x.len()];
        let jobs = out.par_chunks_mut(CHUNK).zip(r.par_chunks(CHUNK));
        match &self.0 {
            Some(mask) => jobs
                .zip(x.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                .for_each(|((o, r), (x, m))| {
                    for (((o, r), x), m) in o.iter_mut().zip(r).zip(x).zip(m) {
                        *o = r + x * m;
                    }
                }),
            None => jobs.zip(x.par_chunks(CHUNK)).for_each(|((o, r), x)| {
                for ((o, r), x) in o.iter_mut().zip(r).zip(x) {
                    *o = r + x;
                }
            }),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _r: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let dx = match &self.0 {
            Some(mask) => grad.apply_op1_no_bwd(&MaskMul(mask.clone()))?,
            None => grad.clone(),
        };
        Ok((Some(grad), Some(dx)))
    }
}

/// `x ⊙ mask`, differentiable in x.
///
/// # Shapes
/// any shape; `mask` holds one value per element of x.
pub fn mask_mul(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    crate::enter("mask-mul", &[x])?;
    x.contiguous()?.apply_op1(MaskMul(Arc::new(mask)))
}

/// `residual + mask ⊙ x`, or `residual + x` without a mask; differentiable in both.
///
/// # Shapes
/// residual and x of the same shape; `mask` holds one value per element.
pub fn masked_add(residual: &Tensor, x: &Tensor, mask: Option<Vec<f32>>) -> Result<Tensor> {
    crate::enter("masked-add", &[residual, x])?;
    if residual.shape() != x.shape() {
        bail!(
            "residual {:?} and branch {:?} differ in shape",
            residual.dims(),
            x.dims()
        )
    }
    residual
        .contiguous()?
        .apply_op2(&x.contiguous()?, MaskedAdd(mask.map(Arc::new)))
}
