//! Views of Candle's CPU storage, and the parallel loops the kernels share.

use candle_core::{CpuStorage, Layout, Result, Shape, bail};
use rayon::prelude::*;

/// Elements below which a row-wise kernel runs serially.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// Elements per parallel job of the elementwise passes.
pub(crate) const CHUNK: usize = 1 << 14;

/// The shape of `l` with its last dimension replaced by `n`: the output of a row-wise op that
/// maps rows of one width to rows of another (products, GLU).
pub(crate) fn with_last_dim(l: &Layout, n: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// The contiguous f32 data of a tensor.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// The contiguous f32 data of a ternary op's three operands.
pub(crate) fn slices3<'a>(
    what: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
    Ok((
        slice(s1, l1, what)?,
        slice(s2, l2, what)?,
        slice(s3, l3, what)?,
    ))
}

/// The contiguous f32 data of a tensor, for writing in place.
pub(crate) fn slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// The contiguous u32 data of a tensor (token ids, row indices).
pub(crate) fn slice_u32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    let data = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => bail!("{what}: expected u32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// The storage from a 2-D layout's first element, with its (row, column) strides.
pub(crate) fn strided_2d<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], (usize, usize))> {
    let CpuStorage::F32(data) = s else {
        bail!("matmul: expected f32")
    };
    match l.stride() {
        &[rs, cs] => Ok((&data[l.start_offset()..], (rs, cs))),
        other => bail!("matmul: expected a 2-D tensor, got strides {other:?}"),
    }
}

/// Runs `f(row_index, out_row)` over rows of width `d`, in parallel when large.
pub(crate) fn for_rows(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    } else {
        out.chunks_mut(d).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// A pointer handed to worker threads that write disjoint blocks of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *const f32);

// SAFETY: only used for blocks of buffers that outlive the parallel loop, read-only or
// written in disjoint parts.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so that closures capture the wrapper (Send) and not the field.
    pub(crate) fn get(self) -> *const f32 {
        self.0
    }

    /// The pointer for writing, for blocks the caller owns.
    pub(crate) fn get_mut(self) -> *mut f32 {
        self.0 as *mut f32
    }
}
