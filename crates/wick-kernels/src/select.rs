//! Row selection of decoding buffers: beam search reorders its caches every step.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, InplaceOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::storage::{PAR_MIN_ELEMS, slice, slice_mut, slice_u32};

struct SelectPrefix {
    len: usize,
}

impl CustomOp2 for SelectPrefix {
    fn name(&self) -> &'static str {
        "wick-select-prefix"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cap, w) = l1.shape().dims3()?;
        let src = slice(s1, l1, "select-prefix buffer")?;
        let ids = slice_u32(s2, l2, "select-prefix indices")?;
        if self.len > cap {
            bail!("select-prefix: {} rows of a buffer of {cap}", self.len)
        }
        if let Some(&i) = ids.iter().find(|&&i| i as usize >= b) {
            bail!("select-prefix: index {i} out of range for {b} rows")
        }
        let (block, used) = (cap * w, self.len * w);
        let total = ids.len() * block;
        // Each element written once: the held positions copied, the room after them zeroed.
        // Zeroing the whole buffer first (then copying over it) doubled the writes of a
        // beam step's cache reordering.
        let mut out: Vec<f32> = Vec::with_capacity(total);
        let fill = |(dst, &i): (&mut [MaybeUninit<f32>], &u32)| {
            let (held, room) = dst.split_at_mut(used);
            for (d, &s) in held.iter_mut().zip(&src[i as usize * block..][..used]) {
                d.write(s);
            }
            for d in room {
                d.write(0.0);
            }
        };
        let spare = &mut out.spare_capacity_mut()[..total];
        if ids.len() * used >= PAR_MIN_ELEMS {
            spare.par_chunks_mut(block.max(1)).zip(ids).for_each(fill);
        } else {
            spare.chunks_mut(block.max(1)).zip(ids).for_each(fill);
        }
        // SAFETY: the loop above wrote every one of the `total` elements (ids.len() chunks of
        // `block`, each written in full).
        unsafe { out.set_len(total) };
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), cap, w))))
    }
}

/// Rows `indices` of `buf` along dim 0, of which only the first `len` positions are copied;
/// the rest of each row is zero. For decoding buffers that hold `len` positions in a larger
/// capacity (beam search reorders them every step), no gradient.
///
/// # Shapes
/// buf `(b, cap, w)`, indices u32 `(b',)` → `(b', cap, w)`.
pub fn index_select_prefix(buf: &Tensor, indices: &Tensor, len: usize) -> Result<Tensor> {
    crate::enter("index-select-prefix", &[buf])?;
    buf.contiguous()?
        .apply_op2_no_bwd(&indices.contiguous()?, &SelectPrefix { len })
}

struct SelectPrefixInto {
    indices: Vec<u32>,
    len: usize,
}

impl InplaceOp2 for SelectPrefixInto {
    fn name(&self) -> &'static str {
        "wick-select-prefix-into"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (rows, cap, w) = l1.shape().dims3()?;
        let (b, src_cap, src_w) = l2.shape().dims3()?;
        if rows != self.indices.len() || src_cap != cap || src_w != w || self.len > cap {
            bail!(
                "select-prefix-into: {} rows of {} positions from {:?} into {:?}",
                self.indices.len(),
                self.len,
                l2.shape(),
                l1.shape()
            )
        }
        if let Some(&i) = self.indices.iter().find(|&&i| i as usize >= b) {
            bail!("select-prefix-into: index {i} out of range for {b} rows")
        }
        let src = slice(s2, l2, "select-prefix-into source")?;
        let dst = slice_mut(s1, l1, "select-prefix-into destination")?;
        let (block, used) = (cap * w, self.len * w);
        let copy = |(dst, &i): (&mut [f32], &u32)| {
            dst[..used].copy_from_slice(&src[i as usize * block..][..used]);
        };
        if rows * used >= PAR_MIN_ELEMS {
            dst.par_chunks_mut(block.max(1))
                .zip(&self.indices)
                .for_each(copy);
        } else {
            dst.chunks_mut(block.max(1))
                .zip(&self.indices)
                .for_each(copy);
        }
        Ok(())
    }
}

/// Writes rows `indices` of `src` into `dst`, in place: row `r` of `dst` gets the first `len`
/// positions of row `indices[r]` of `src`; the positions after them keep what they held. For
/// a decoding buffer reordered every step of beam search into a second buffer of the same
/// room (the two take turns), where [`index_select_prefix`] allocates a new buffer each step
/// and writes its whole room. `dst` and `src` must not share storage. No gradient.
///
/// # Shapes
/// dst `(indices.len(), cap, w)` (contiguous), src `(b, cap, w)`.
pub fn select_prefix_into(dst: &Tensor, src: &Tensor, indices: &[u32], len: usize) -> Result<()> {
    crate::enter("select-prefix-into", &[dst, src])?;
    if !dst.is_contiguous() {
        bail!("select-prefix-into: the destination must be contiguous")
    }
    dst.inplace_op2(
        &src.contiguous()?,
        &SelectPrefixInto {
            indices: indices.to_vec(),
            len,
        },
    )
}
