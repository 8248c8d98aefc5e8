//! Token embeddings: the lookup, the scale and the position rows in one node.
//!
//! Composed from Candle ops this is an index-select, a scale and a broadcast sum, two full-size
//! intermediates; and the sum over a large batch runs on Candle's own thread pool, which
//! contends with rayon's for the same cores during inference.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::storage::{PAR_MIN_ELEMS, slice, slice_u32};

/// `out[n, j] = table[ids[n, j]] · scale + positions[offset + j]`.
struct Embed {
    scale: f32,
    offset: usize,
}

impl CustomOp3 for Embed {
    fn name(&self) -> &'static str {
        "wick-embed"
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
        let ids = slice_u32(s1, l1, "embedding ids")?;
        let table = slice(s2, l2, "embedding table")?;
        let positions = slice(s3, l3, "position table")?;
        let (b, t) = l1.shape().dims2()?;
        let (v, d) = l2.shape().dims2()?;
        let (p, pd) = l3.shape().dims2()?;
        if pd != d || self.offset + t > p {
            bail!(
                "embedding: positions {:?} cannot serve {t} positions from {} at width {d}",
                l3.dims(),
                self.offset
            )
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            bail!("embedding: token id {bad} outside a vocabulary of {v}")
        }
        let mut out = vec![0f32; b * t * d];
        let row = |(n, o): (usize, &mut [f32])| {
            let e = &table[ids[n] as usize * d..][..d];
            let pos = &positions[(self.offset + n % t) * d..][..d];
            for ((o, &e), &q) in o.iter_mut().zip(e).zip(pos) {
                *o = e * self.scale + q;
            }
        };
        if out.len() >= PAR_MIN_ELEMS {
            out.par_chunks_mut(d.max(1)).enumerate().for_each(row);
        } else {
            out.chunks_mut(d.max(1)).enumerate().for_each(row);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, d))))
    }

    fn bwd(
        &self,
        ids: &Tensor,
        table: &Tensor,
        positions: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, d) = grad.dims3()?;
        let grad = grad.detach();
        // d table: the rows of dY·scale added at their ids.
        let rows = (grad.reshape((b * t, d))? * self.scale as f64)?;
        let dtable = table
            .zeros_like()?
            .index_add(&ids.flatten_all()?, &rows, 0)?;
        // d positions only for learned positions; a fixed table needs none.
        let dpos = if positions.is_variable() {
            let per_position = grad.sum(0)?; // (t, d)
            let (p, _) = positions.dims2()?;
            let before = Tensor::zeros((self.offset, d), grad.dtype(), grad.device())?;
            let after = Tensor::zeros((p - self.offset - t, d), grad.dtype(), grad.device())?;
            Some(Tensor::cat(&[&before, &per_position, &after], 0)?)
        } else {
            None
        };
        Ok((None, Some(dtable), dpos))
    }
}

/// `table[ids] · scale + positions[offset .. offset + t]`, differentiable in the table (and in
/// the positions when they are a variable).
///
/// # Shapes
/// ids `(b, t)` u32, table `(V, d)`, positions `(P ≥ offset + t, d)` → `(b, t, d)`.
pub fn embed(
    ids: &Tensor,
    table: &Tensor,
    scale: f64,
    positions: &Tensor,
    offset: usize,
) -> Result<Tensor> {
    crate::enter("embed", &[table, positions])?;
    ids.contiguous()?.apply_op3(
        &table.contiguous()?,
        &positions.contiguous()?,
        Embed {
            scale: scale as f32,
            offset,
        },
    )
}
