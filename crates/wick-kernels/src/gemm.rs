//! Matrix products on the `gemm` crate (the kernel Candle's own matmul uses), split into one
//! block per thread, and transposes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::storage::{SendPtr, slice, strided_2d};

/// Rows of the output per task below which [`gemm_into`] does not split rows.
const GEMM_MIN_ROWS_PER_TASK: usize = 64;

/// Columns of the output per task below which [`gemm_into`] does not split columns.
const GEMM_MIN_COLS_PER_TASK: usize = 512;

/// `dst` `(m, n)` row-major = A·B (`+= ` with `accumulate`), A `(m, k)` and B `(k, n)` read
/// through (row, column) strides, on the `gemm` kernel Candle's own matmul uses.
///
/// With several threads the output is split into one block per thread, each a
/// single-threaded `gemm`: by rows, or by columns when there are more columns than rows
/// (the projection onto the vocabulary). `gemm`'s own threading splits every k-block
/// of the product and synchronises after each, which measured slower on the training step's
/// shapes (`wick bench matmul`) on this class of machine (few cores); it is left the
/// products too small to split.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dims: (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
) -> Result<()> {
    let product = Product {
        dims,
        a,
        a_strides,
        b,
        b_strides,
    };
    product.check()?;
    if dst.len() < dims.0 * dims.1 {
        bail!("gemm: output buffer too small for {dims:?}")
    }
    // SAFETY: dst holds the m × n output (checked above), the operands their extents.
    unsafe { product.run(dst.as_mut_ptr(), accumulate) };
    Ok(())
}

/// One product `A·B` with A `(m, k)` and B `(k, n)` read through (row, column) strides,
/// `dims` = (m, n, k).
pub(crate) struct Product<'a> {
    pub dims: (usize, usize, usize),
    pub a: &'a [f32],
    pub a_strides: (usize, usize),
    pub b: &'a [f32],
    pub b_strides: (usize, usize),
}

/// The products' outputs one after another in one new buffer, never zeroed: a product
/// without accumulation writes every element of its output and reads none (`gemm` does not
/// read the destination then). Zeroing the logits `(rows, V)` alone took ~1% of a tiny
/// training step.
pub(crate) fn gemm_fresh(products: &[Product]) -> Result<Vec<f32>> {
    for p in products {
        p.check()?;
    }
    let len = products.iter().map(|p| p.dims.0 * p.dims.1).sum();
    let mut out = Vec::<f32>::with_capacity(len);
    let base = out.as_mut_ptr();
    let mut offset = 0;
    for p in products {
        // SAFETY: outputs are laid end to end within the capacity of `len` elements.
        unsafe { p.run(base.add(offset), false) };
        offset += p.dims.0 * p.dims.1;
    }
    // SAFETY: every element in 0..len was written by exactly one product above.
    unsafe { out.set_len(len) };
    Ok(out)
}

impl Product<'_> {
    /// The operands reach every element their strides address.
    fn check(&self) -> Result<()> {
        let (m, n, k) = self.dims;
        let reach = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * rs + (cols - 1) * cs + 1
            }
        };
        if self.a.len() < reach(self.a_strides, m, k) || self.b.len() < reach(self.b_strides, k, n)
        {
            bail!("gemm: operands too small for ({m}×{k})·({k}×{n})")
        }
        Ok(())
    }

    /// # Safety
    /// `dst` is valid for writes (and reads, with `accumulate`) of `m × n` elements, and the
    /// operands passed [`Self::check`].
    unsafe fn run(&self, dst: *mut f32, accumulate: bool) {
        let (m, n, k) = self.dims;
        let ((a_rs, a_cs), (b_rs, b_cs)) = (self.a_strides, self.b_strides);
        let threads = if crate::scope::products_whole() {
            1
        } else {
            rayon::current_num_threads()
        };
        let (ap, bp) = (SendPtr(self.a.as_ptr()), SendPtr(self.b.as_ptr()));
        let dp = SendPtr(dst as *const f32);
        let product = |dst: *mut f32, (rows, cols): (usize, usize), a, b, parallelism| {
            // SAFETY: the blocks handed out below lie within the extents the caller
            // guarantees, and no two blocks of `dst` overlap.
            unsafe {
                gemm_unchecked(
                    dst,
                    n,
                    (rows, cols, k),
                    a,
                    (a_rs, a_cs),
                    b,
                    (b_rs, b_cs),
                    accumulate,
                    parallelism,
                )
            }
        };
        // Every block packs its own copy of the operand it shares with the other blocks, so
        // the split runs along the longer side of the output: row blocks share B (k × n),
        // column blocks share A (m × k). Decoding's projection onto the vocabulary, 320 rows
        // by 16,000 columns for beam 5, packed all of Wᵀ once per row block.
        let by_rows = m >= 2 * GEMM_MIN_ROWS_PER_TASK && (m >= n || n < 2 * GEMM_MIN_COLS_PER_TASK);
        if threads > 1 && by_rows && n > 0 {
            let rows_per_task = m.div_ceil(threads).max(GEMM_MIN_ROWS_PER_TASK);
            (0..m.div_ceil(rows_per_task))
                .into_par_iter()
                .for_each(|i| {
                    let r = i * rows_per_task;
                    let rows = rows_per_task.min(m - r);
                    let dst = dp.get_mut().wrapping_add(r * n);
                    let a = ap.get().wrapping_add(r * a_rs);
                    product(dst, (rows, n), a, bp.get(), gemm::Parallelism::None);
                });
            return;
        }
        if threads > 1 && n >= 2 * GEMM_MIN_COLS_PER_TASK && m > 0 {
            // Multiples of 16 columns keep every block's edges on the kernel's register tiles.
            let cols_per_task = n.div_ceil(threads).next_multiple_of(16);
            (0..n.div_ceil(cols_per_task))
                .into_par_iter()
                .for_each(|i| {
                    let j = i * cols_per_task;
                    let cols = cols_per_task.min(n - j);
                    let dst = dp.get_mut().wrapping_add(j);
                    let b = bp.get().wrapping_add(j * b_cs);
                    product(dst, (m, cols), ap.get(), b, gemm::Parallelism::None);
                });
            return;
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        product(dst, (m, n), ap.get(), bp.get(), parallelism);
    }
}

/// `a·b` for 2-D f32 tensors on the CPU, either operand possibly a transposed or narrowed view,
/// on `gemm` with the output split into one block per thread (by rows, or by columns when
/// there are more of them); no autograd. Backward passes and `wick bench matmul` use it, so
/// the benchmark times the products the step runs.
///
/// # Shapes
/// a `(m, k)`, b `(k, n)` → `(m, n)`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::enter("matmul", &[a, b])?;
    a.apply_op2_no_bwd(b, &MatMul)
}

struct MatMul;

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "wick-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            bail!("matmul: ({m}×{k})·({k2}×{n})")
        }
        let (a, a_strides) = strided_2d(s1, l1)?;
        let (b, b_strides) = strided_2d(s2, l2)?;
        let out = gemm_fresh(&[Product {
            dims: (m, n, k),
            a,
            a_strides,
            b,
            b_strides,
        }])?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

struct Transpose;

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "wick-transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "transpose")?;
        let (r, c) = l.shape().dims2()?;
        let mut out = vec![0f32; r * c];
        // Tiles of 32 × 32 keep both the rows read and the rows written in L1; output row
        // blocks run in parallel.
        const TILE: usize = 32;
        if r > 0 {
            out.par_chunks_mut(TILE * r)
                .enumerate()
                .for_each(|(bj, block)| {
                    let j0 = bj * TILE;
                    let cols = block.len() / r;
                    for i0 in (0..r).step_by(TILE) {
                        for i in i0..(i0 + TILE).min(r) {
                            let src = &x[i * c + j0..i * c + j0 + cols];
                            for (dj, &v) in src.iter().enumerate() {
                                block[dj * r + i] = v;
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((c, r))))
    }
}

/// `xᵀ` as a new contiguous tensor, no gradient. Written here because Candle's
/// `t()?.contiguous()` walks a strided index one element at a time: 4% of a greedy decoding
/// call on the small preset went to transposing its weights that way.
///
/// # Shapes
/// `(r, c)` → `(c, r)`.
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    crate::enter("transpose", &[x])?;
    x.contiguous()?.apply_op1_no_bwd(&Transpose)
}

/// # Safety
/// `dst` reaches every `(row, column)` of an `(m, n)` matrix with row stride `dst_rs` (column
/// stride 1), `a` every element of an `(m, k)` matrix with the given strides, `b` likewise
/// for `(k, n)`; no other thread touches those elements of `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller guarantees the operands' extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
